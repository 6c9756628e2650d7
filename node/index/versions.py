"""Versions of shared state objects (``_state/{name}/``), moved forward by compare-and-set,
so that several workers can share one learnt model without overwriting each other."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, insert, select, update

from node.index import schema as s
from node.index.transactions import Transactions


def current(catalog: Transactions, name: str) -> int:
    """The current version of ``name`` (0: none yet). Raises CatalogError."""
    stmt = select(s.node_state.c.version).where(s.node_state.c.name == name)
    return catalog.reading(
        f"reading the version of {name}", lambda conn: conn.scalar(stmt) or 0)


def advance(catalog: Transactions, name: str, old: int, new: int) -> bool:
    """Moves ``name`` from version ``old`` to ``new``; False when another writer moved it
    first (nothing changed). Raises CatalogError."""
    return catalog.transaction(
        f"moving {name} to version {new}",
        lambda conn: advance_in(conn, name, old, new, datetime.now(UTC)))


def advance_in(conn: Connection, name: str, old: int, new: int, now: datetime) -> bool:
    """``advance`` inside the caller's transaction, so that what the new version stands for
    (a queued job) commits with it or not at all."""
    if old == 0:
        if conn.scalar(select(s.node_state.c.version)
                       .where(s.node_state.c.name == name)) is not None:
            return False
        conn.execute(insert(s.node_state).values(name=name, version=new, updated_at=now))
        return True
    return bool(conn.execute(update(s.node_state).where(
        s.node_state.c.name == name, s.node_state.c.version == old)
        .values(version=new, updated_at=now)).rowcount == 1)
