"""Which version of a rewritten object is the current one, so that an older ciphertext put
back at the same path is refused instead of read.

Authenticated encryption binds an object to its path, not to a time: a copy of a
description taken before processing decrypts fine after it. So every write of an object
that is rewritten in place (:func:`node.layout.is_rewritten`) records the SHA-256 of the
object's 32-byte header in the index, whose salt is new on each write, and every read of
such an object compares. An object with no record was written once and never since (the
description ingest wrote; a first output): that version is the only one there has been,
so there is nothing older to put back.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.index import schema as s
from node.index.transactions import Transactions


def fingerprint(header: bytes) -> str:
    return hashlib.sha256(header).hexdigest()


class ObjectVersions:
    """The index's record of current versions (see the module docstring)."""

    def __init__(self, index: Transactions, dialect: str) -> None:
        self.index = index
        self.insert = pg_insert if dialect == "postgresql" else sqlite_insert

    def record(self, headers: dict[str, bytes]) -> None:
        """Makes these (path: header) the current versions. Raises CatalogError."""
        if not headers:
            return
        now = datetime.now(UTC)
        rows = [{"path": p, "header_sha256": fingerprint(h), "written_at": now}
                for p, h in headers.items()]

        def work(conn: Connection) -> None:
            stmt = self.insert(s.object_versions)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["path"],
                set_={"header_sha256": stmt.excluded.header_sha256,
                      "written_at": stmt.excluded.written_at}), rows)

        self.index.transaction("recording object versions", work)

    def current(self, path: str) -> str | None:
        """The fingerprint of the current version of ``path``; None: never rewritten."""
        stmt = select(s.object_versions.c.header_sha256).where(
            s.object_versions.c.path == path)
        return self.index.reading("reading an object version", lambda conn: conn.scalar(stmt))
