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


def upgrade(conn: Connection) -> None:
    """Adds the columns an older index lacks; queues its never-processed instances.

    Every nullable column of the schema that the database lacks is added (so an attribute
    added to ``node.index.attributes`` reaches old indexes too), with the indexes on it.
    """
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    for table in s.metadata.sorted_tables:
        if table.name not in tables:
            continue  # create_all made it whole
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present and column.nullable:
                sql_type = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} "
                                  f"{sql_type}"))
        for index in table.indexes:  # indexes on columns added later
            index.create(conn, checkfirst=True)
    legacy = list(conn.scalars(select(s.instances.c.sop_uid)
                               .where(s.instances.c.state == "stored")))
    if legacy:
        conn.execute(update(s.instances).where(s.instances.c.state == "stored")
                     .values(state=State.QUEUED))
        enqueue(conn, legacy, datetime.now(UTC))
