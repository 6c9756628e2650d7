"""Running a query: rows streamed from the database, YIELD_PER at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Select, func, select
from sqlalchemy.exc import SQLAlchemyError

from node.errors import CatalogError
from node.index.engine import describe_error as _describe_db_error  # PHI-free
from node.index.query.model import Query
from node.index.query.sql import select_instances, select_matches

YIELD_PER = 1000  # rows fetched at a time: 100,000 matches never sit in memory at once


class _HasEngine(Protocol):
    @property
    def engine(self) -> Engine: ...


Source = Engine | Connection | _HasEngine


@dataclass(frozen=True)
class InstanceRef:
    """One instance to retrieve: what a retrieve (C-MOVE, C-GET, WADO-RS) needs."""

    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    study_uid: str
    series_uid: str


def run(source: Source, query: Query) -> Iterator[Mapping[str, Any]]:
    """Yields one ``{keyword: value}`` mapping per matching entity (the keys are
    :meth:`Query.columns`; a value is None when the index holds none), in no particular order.

    Args:
        source: an SQLAlchemy Engine (a connection of its own is held until the iterator is
            exhausted or closed), a Connection (used as is, inside its transaction), or a
            :class:`~node.index.catalog.Catalog`.

    Raises:
        CatalogError: the database failed (raised from the iteration).
    """
    what = f"querying at the {query.level.value} level"
    for row in _stream(source, lambda d: select_matches(query, d), what):
        yield row._mapping


def instances_for(source: Source, query: Query) -> Iterator[InstanceRef]:
    """Yields the instances below the entities that ``query`` matches, in no particular
    order.

    Raises:
        CatalogError: the database failed (raised from the iteration).
    """
    for row in _stream(source, lambda d: select_instances(query, d),
                       "listing instances to retrieve"):
        yield InstanceRef(**row._mapping)


def count_instances(source: Source, query: Query) -> int:
    """Returns how many instances :func:`instances_for` would yield (the number of
    sub-operations a C-MOVE or C-GET announces).

    Raises:
        CatalogError: the database failed.
    """

    def build(dialect: str) -> Select[Any]:
        inner = select_instances(query, dialect).subquery()
        return select(func.count()).select_from(inner)

    rows = list(_stream(source, build, "counting instances to retrieve"))
    return int(rows[0][0])


def _engine_of(source: Source) -> Engine | Connection:
    if isinstance(source, Engine | Connection):
        return source
    return source.engine  # a Catalog


def _stream(source: Source, build: Callable[[str], Select[Any]], what: str) -> Iterator[Any]:
    """Yields the rows of ``build(dialect)`` (a server-side cursor on PostgreSQL).

    Raises:
        CatalogError: the database failed.
    """
    bind = _engine_of(source)
    stmt = build(bind.dialect.name).execution_options(yield_per=YIELD_PER)
    try:
        if isinstance(bind, Connection):
            yield from bind.execute(stmt)
            return
        with bind.connect() as conn:
            yield from conn.execute(stmt)
    except SQLAlchemyError as exc:
        raise CatalogError(f"{what} failed: {_describe_db_error(exc)}") from exc
