"""The index's record of objects that wait in a node's local spool (node.store.spool).

A row says: the ciphertext of the object at ``path`` lies in segment ``segment`` of the
spool ``spool``, ``length`` bytes from ``position``. Ingest inserts the rows of an instance
in the transaction that indexes it (so an acknowledged instance is always findable); the
uploader deletes them once the store holds the objects; a rewrite of a spooled object
(a description updated by hand) deletes its row first, so the older spooled bytes are never
put over the newer ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.index import schema as s
from node.index.transactions import Transactions

_T = s.spooled


@dataclass(frozen=True)
class Spooled:
    """Where one object's ciphertext waits."""

    path: str
    spool: str
    segment: str
    position: int
    length: int


def insert_in(conn: Connection, entries: Sequence[Spooled],
              now: datetime | None = None) -> None:
    """Adds ``entries`` inside the caller's transaction (ingest's index write), in one
    statement. A row left for a path (its instance removed from the index while it was
    spooled, then received again) is replaced."""
    if not entries:
        return
    at = now or datetime.now(UTC)
    conn.execute(_UPSERT[conn.dialect.name], [
        {"path": e.path, "spool": e.spool, "segment": e.segment, "position": e.position,
         "length": e.length, "spooled_at": at} for e in entries])


def _upsert(make: Any) -> Any:
    stmt = make(_T)
    return stmt.on_conflict_do_update(index_elements=["path"], set_={
        c: stmt.excluded[c] for c in ("spool", "segment", "position", "length", "spooled_at")})


# Statements are built once: building one costs more than running it on SQLite, and the
# insert is on the acknowledgement path, the others on the uploader's.
_UPSERT = {"postgresql": _upsert(pg_insert), "sqlite": _upsert(sqlite_insert)}
_COLUMNS = (_T.c.path, _T.c.spool, _T.c.segment, _T.c.position, _T.c.length)
_STILL_THERE = select(*_COLUMNS).where(_T.c.path.in_(bindparam("paths", expanding=True)))
_DONE = delete(_T).where(and_(_T.c.path == bindparam("k_path"),
                              _T.c.segment == bindparam("k_segment"),
                              _T.c.position == bindparam("k_position")))


def _row(r: object) -> Spooled:
    m = r._mapping  # type: ignore[attr-defined]
    return Spooled(m["path"], m["spool"], m["segment"], m["position"], m["length"])


class SpooledRows:
    """The ``spooled`` table, through the catalog's transactions."""

    def __init__(self, index: Transactions) -> None:
        self.index = index

    def locate(self, path: str) -> Spooled | None:
        """Where ``path`` waits, or None when it is not spooled. Raises CatalogError."""
        stmt = select(*_COLUMNS).where(_T.c.path == path)
        row = self.index.reading("looking up a spooled object",
                                 lambda conn: conn.execute(stmt).first())
        return None if row is None else _row(row)

    def waiting(self, spool: str, limit: int,
                skip_segments: Iterable[str] = ()) -> list[Spooled]:
        """The oldest ``limit`` rows of ``spool``, but none in ``skip_segments``. Raises
        CatalogError."""
        stmt = select(*_COLUMNS).where(_T.c.spool == spool)
        if skip := list(skip_segments):
            stmt = stmt.where(_T.c.segment.not_in(skip))
        stmt = stmt.order_by(_T.c.spooled_at, _T.c.segment, _T.c.position).limit(limit)
        return self.index.reading("listing spooled objects",
                                  lambda conn: [_row(r) for r in conn.execute(stmt)])

    def still_there(self, entries: Iterable[Spooled]) -> list[Spooled]:
        """Those of ``entries`` whose row is unchanged (not uploaded or forgotten since)."""
        wanted = {(e.path, e.segment, e.position): e for e in entries}
        if not wanted:
            return []
        paths = {"paths": [p for p, _, _ in wanted]}
        rows = self.index.reading("checking spooled objects", lambda conn: [
            _row(r) for r in conn.execute(_STILL_THERE, paths)])
        return [wanted[k] for r in rows if (k := (r.path, r.segment, r.position)) in wanted]

    def done(self, entries: Sequence[Spooled]) -> None:
        """Forgets the rows of ``entries`` (uploaded), each only if unchanged."""
        if not entries:
            return

        rows = [{"k_path": e.path, "k_segment": e.segment, "k_position": e.position}
                for e in entries]
        self.index.transaction("recording uploaded objects",
                               lambda conn: conn.execute(_DONE, rows))

    def forget(self, path: str) -> bool:
        """Deletes the row of ``path`` (its object is being rewritten in the store);
        True when there was one."""
        stmt = delete(_T).where(_T.c.path == path)
        return bool(self.index.transaction("forgetting a spooled object",
                                           lambda conn: conn.execute(stmt).rowcount))

    def in_segment(self, spool: str, segment: str) -> bool:
        """Whether any row still points into ``segment``."""
        stmt = select(_T.c.path).where(and_(_T.c.spool == spool,
                                            _T.c.segment == segment)).limit(1)
        return self.index.reading("checking a spool segment",
                                  lambda conn: conn.execute(stmt).first() is not None)

    def totals(self, spool: str | None = None) -> tuple[int, int]:
        """(objects, bytes) waiting, in ``spool`` or in every spool."""
        stmt = select(func.count(), func.coalesce(func.sum(_T.c.length), 0))
        if spool is not None:
            stmt = stmt.where(_T.c.spool == spool)
        row = self.index.reading("counting spooled objects",
                                 lambda conn: conn.execute(stmt).one())
        return int(row[0]), int(row[1])

    def paths(self) -> set[str]:
        """Every spooled path (verify counts these objects as present)."""
        stmt = select(_T.c.path)
        return self.index.reading("listing spooled objects",
                                  lambda conn: set(conn.scalars(stmt)))
