"""Bringing an index made by an older version up to the current schema, in place.

``create_all`` makes missing tables but never changes existing ones; columns added since
are added here (nullable, so no row needs rewriting), and the rows they describe keep
their meaning: instances indexed before processing existed are queued for it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, inspect, select, text, update

from node.index import schema as s
from node.index.jobs import enqueue
from node.index.records import State

# table -> columns added after the first release (nullable; types from the schema).
_ADDED = {
    s.instances: ("blank", "recipe_id", "labels"),
    s.series: ("last_received_at", "expected_instances", "complete_at"),
}


def upgrade(conn: Connection) -> None:
    """Adds the columns an older index lacks; queues its never-processed instances."""
    inspector = inspect(conn)
    for table, columns in _ADDED.items():
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for name in columns:
            if name not in present:
                sql_type = table.c[name].type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {name} {sql_type}"))
    for index in s.series.indexes:  # indexes on columns added later
        index.create(conn, checkfirst=True)
    legacy = list(conn.scalars(select(s.instances.c.sop_uid)
                               .where(s.instances.c.state == "stored")))
    if legacy:
        conn.execute(update(s.instances).where(s.instances.c.state == "stored")
                     .values(state=State.QUEUED))
        enqueue(conn, legacy, datetime.now(UTC))
