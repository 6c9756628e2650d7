"""Running the index's SQL: transactions, reads and streamed listings.

:class:`TransactionRunner` runs a function in one write transaction or in a read, and turns
every database failure into :class:`node.errors.CatalogError`. On SQLite, writers are
serialised by a lock in Python and open their transaction with BEGIN IMMEDIATE, so that they
queue instead of failing with "database is locked"; PostgreSQL needs no lock, and its rare
races between transactions (a row created or removed concurrently, a deadlock) are retried.
Messages name the work and the database's own short error text only: the engine hides bound
parameters (which hold PHI), and PostgreSQL's DETAIL lines (which quote row values) are left
out.

Work run in a write transaction steers it with two exceptions that are control flow, not
errors: :class:`Rollback` (undo and return a value) and :class:`Retry` (undo and run again).

Modules that keep rows of their own (jobs, versions, tokens) need only to run a function in
a write transaction or a read, with the catalog's retries and error translation; they take a
:class:`Transactions` instead of the Catalog class, so that they do not import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, TypeVar

from sqlalchemy import URL, Connection, Engine, Row, Select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from node.errors import CatalogError
from node.index.engine import describe_error, sqlite_lock_for, sqlstate

T = TypeVar("T")

_ATTEMPTS = 5  # PostgreSQL: tries of a write transaction that lost a race
# PostgreSQL SQLSTATEs that mean "another transaction got in the way; run it again":
# unique_violation, foreign_key_violation, serialization_failure, deadlock_detected.
_RETRYABLE_SQLSTATES = frozenset({"23505", "23503", "40001", "40P01"})


class Transactions(Protocol):
    def transaction(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` in one write transaction (retried on a lost race); raises
        CatalogError naming ``what``."""
        ...

    def reading(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` in a read; raises CatalogError naming ``what``."""
        ...


class Rollback(Exception):  # control flow, not an error
    """Raised inside a write transaction to roll it back and return ``value``."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


class Retry(Exception):  # control flow, not an error
    """Raised inside a write transaction that lost a race: roll back and run it again."""


class TransactionRunner:
    """Runs work on one engine's connections; thread-safe.

    Args:
        engine: the index's engine (``node.index.engine.make_engine``).
        url: its URL, which names the SQLite file whose writer lock is shared by every
            runner of this process.
    """

    def __init__(self, engine: Engine, url: URL) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._writer_lock: AbstractContextManager[Any] = (
            sqlite_lock_for(url) if self._dialect == "sqlite" else nullcontext()
        )

    def write(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` in one write transaction, retrying races on PostgreSQL.

        ``work`` may raise :class:`Rollback` to roll back and return a value, or
        :class:`Retry` to run again.

        Returns:
            What ``work`` returned.

        Raises:
            CatalogError: the database failed, or the race was lost ``_ATTEMPTS`` times.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return self._write_once(work)
            except Rollback as stop:
                return stop.value  # type: ignore[no-any-return]
            except Retry as exc:
                if attempt == _ATTEMPTS:
                    raise CatalogError(f"{what} failed: lost a race {attempt} times") from exc
            except DBAPIError as exc:
                if attempt == _ATTEMPTS or not self._retryable(exc):
                    raise CatalogError(f"{what} failed: {describe_error(exc)}") from exc
            except SQLAlchemyError as exc:
                raise CatalogError(f"{what} failed: {describe_error(exc)}") from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    def _write_once(self, work: Callable[[Connection], T]) -> T:
        with self._writer_lock, self._engine.connect() as conn:
            # Read by _sqlite_on_begin: take the write lock now, not on the first write,
            # so that the transaction never has to upgrade a read snapshot (which fails
            # at once with SQLITE_BUSY instead of waiting).
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                return work(conn)

    def read(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` on a connection of its own, without the writer lock.

        Returns:
            What ``work`` returned.

        Raises:
            CatalogError: the database failed.
        """
        try:
            with self._engine.connect() as conn:
                return work(conn)
        except SQLAlchemyError as exc:
            raise CatalogError(f"{what} failed: {describe_error(exc)}") from exc

    def stream(
        self, what: str, stmt: Select[Any], make: Callable[[Row[Any]], T], yield_per: int
    ) -> Iterator[T]:
        """Yields ``make(row)`` for the rows of ``stmt``, fetched ``yield_per`` at a time (a
        server-side cursor on PostgreSQL), so that a listing of the whole index does not sit
        in memory. The stream holds one connection until it is exhausted or closed.

        Raises:
            CatalogError: the database failed (raised from the iteration).
        """
        try:
            with self._engine.connect() as conn:
                result = conn.execution_options(yield_per=yield_per).execute(stmt)
                for row in result:
                    yield make(row)
        except SQLAlchemyError as exc:
            raise CatalogError(f"{what} failed: {describe_error(exc)}") from exc

    def _retryable(self, exc: DBAPIError) -> bool:
        # SQLite writers are serialised, so they never race; a busy database has already
        # waited out the busy timeout and is reported.
        return self._dialect == "postgresql" and sqlstate(exc) in _RETRYABLE_SQLSTATES
