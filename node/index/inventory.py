"""What the index says is stored: every instance and conflict row's folder, for `verify` to
hold against what the store holds (node.verify)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from node.index import schema as s
from node.index.transactions import Transactions

__all__ = ["Row", "indexed_folders", "remove_conflict_row"]


@dataclass(frozen=True)
class Row:
    """One index row that points at a folder of the store: an instance or a kept conflict."""

    folder: str
    sop_uid: str
    sha256: str
    conflict: bool


def indexed_folders(catalog: Transactions) -> dict[str, Row]:
    """Folder (object key) -> its row, for every instance and conflict row.

    Raises CatalogError.
    """
    def read(conn: Connection) -> dict[str, Row]:
        out: dict[str, Row] = {}
        i, c = s.instances.c, s.conflicts.c
        for folder, sop, sha in conn.execute(select(i.object_key, i.sop_uid, i.sha256)):
            out[folder] = Row(folder, sop, sha, conflict=False)
        for folder, sop, sha in conn.execute(select(c.object_key, c.sop_uid, c.sha256)):
            out[folder] = Row(folder, sop, sha, conflict=True)
        return out
    return catalog.reading("listing indexed folders", read)


def remove_conflict_row(catalog: Transactions, folder: str) -> bool:
    """Removes the conflict row of `folder`; True if there was one. Raises CatalogError."""
    stmt = delete(s.conflicts).where(s.conflicts.c.object_key == folder)
    return bool(catalog.transaction(f"removing conflict row {folder}",
                                    lambda conn: conn.execute(stmt).rowcount > 0))
