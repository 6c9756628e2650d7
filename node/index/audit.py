"""The audit trail: an append-only record, in the index, of who stored, queried, retrieved,
exported or deleted what.

Each entry names the action, the protocol, the caller (AE title, token name, OS user), the
hospital, the outcome and the UIDs or counts concerned; never a patient's name, ID or any
other attribute value (a query's entry lists the keys it matched on, not their values).

Stores are recorded in the transaction that indexes the instance (``entry_in``), so an
acknowledged instance always has its entry. Everything else goes through :class:`AuditLog`,
which batches entries and writes them every half second in one transaction (a request per
frame of a viewer must not wait for a commit); a process killed in that half second loses
those entries, and the choice is written down in the closing note.
"""

from __future__ import annotations

import getpass
import logging
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from node.errors import CatalogError
from node.index import schema as s
from node.index.transactions import Transactions

log = logging.getLogger("support_node.audit")
ACTIONS = ("store", "query", "retrieve", "export", "delete")
_FLUSH_SECONDS = 0.5


@dataclass(frozen=True)
class Entry:
    action: str
    protocol: str
    caller: str
    outcome: str
    hospital: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    count: int | None = None
    detail: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def entry_in(conn: Connection, entry: Entry) -> None:
    """Appends ``entry`` inside the caller's transaction."""
    conn.execute(_APPEND, asdict(entry))


_APPEND = insert(s.audit)


def os_user() -> str:
    """Who runs a command, for entries made by the CLI (the OS account; never a secret)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's bare uid)
        return f"uid {os.getuid()}"


def scope(hospitals: Sequence[str] | None) -> str | None:
    """A caller's hospitals as the audit's hospital column."""
    return None if hospitals is None else ",".join(hospitals)


class AuditLog:
    """Batches entries into the index from a background thread (see the module docstring)."""

    def __init__(self, index: Transactions) -> None:
        self.index = index
        self._queue: queue.Queue[Entry | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def record(self, entry: Entry) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
                self._thread.start()
        self._queue.put(entry)

    def close(self) -> None:
        """Writes what is queued and stops the thread."""
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(10)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[Entry] = []
            first = self._queue.get()
            if first is None:
                break
            batch.append(first)
            deadline = datetime.now(UTC).timestamp() + _FLUSH_SECONDS
            while (left := deadline - datetime.now(UTC).timestamp()) > 0:
                try:
                    more = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._write(batch)

    def _write(self, batch: list[Entry]) -> None:
        def work(conn: Connection) -> None:
            conn.execute(insert(s.audit), [asdict(e) for e in batch])

        try:
            self.index.transaction("writing the audit trail", work)
        except CatalogError as exc:
            log.error("%d audit entries not written: %s", len(batch), exc)


def entries(index: Transactions, action: str | None = None, since: datetime | None = None,
            limit: int = 100) -> list[dict[str, Any]]:
    """The latest entries first, at most ``limit``."""
    stmt = select(s.audit).order_by(s.audit.c.pk.desc()).limit(limit)
    if action is not None:
        stmt = stmt.where(s.audit.c.action == action)
    if since is not None:
        stmt = stmt.where(s.audit.c.at >= since)

    def read(conn: Connection) -> list[dict[str, Any]]:
        return [dict(row._mapping) for row in conn.execute(stmt)]

    return index.reading("reading the audit trail", read)
