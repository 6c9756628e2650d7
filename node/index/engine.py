"""Connecting to the index database: URLs, engines, SQLite pragmas and locks, and the one
PHI-free way of describing a database error.

SQLite (the embedded default): WAL, ``synchronous=FULL`` (an acknowledged instance must
survive a power cut), foreign keys, a busy timeout, and one writer lock per file, shared by
the node's processes (``WriterLock``). PostgreSQL: the psycopg 3 driver, a connect timeout,
pre-ping.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from node.errors import CatalogError

_BUSY_TIMEOUT_S = 30  # SQLite: how long a writer waits for another process's lock
_CONNECT_TIMEOUT_S = 10  # PostgreSQL, unless the URL sets connect_timeout
_POOL_SIZE = 8
_POOL_OVERFLOW = 24  # one connection per association, plus streaming readers

# One writer lock per SQLite file, shared by every Catalog of this process on that file.
_sqlite_locks: dict[str, WriterLock] = {}
_sqlite_locks_guard = threading.Lock()


def sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def describe_error(exc: SQLAlchemyError) -> str:
    """Returns a one-line, PHI-free description of a database error.

    For driver errors: the error class, its code (SQLSTATE, SQLite error name) and the first
    line of its message. PostgreSQL quotes row values only in DETAIL lines (not the first)
    and, for data exceptions (class 22), in the message itself (then left out); SQLite's
    messages name columns, never values. Other SQLAlchemy errors give their class only,
    as a statement error may carry a value in its text.
    """
    if not isinstance(exc, DBAPIError) or exc.orig is None:
        return type(exc).__name__
    orig = exc.orig
    code = sqlstate(exc) or getattr(orig, "sqlite_errorname", None)
    diag = getattr(orig, "diag", None)
    text = getattr(diag, "message_primary", None) or str(orig)
    lines = text.strip().splitlines()
    message = "" if (code or "").startswith("22") or not lines else lines[0][:200]
    return ": ".join(p for p in (type(orig).__name__, code, message) if p)


# ---- engines --------------------------------------------------------------------------------


def normalise_url(url: str) -> URL:
    """Returns the parsed URL, with ``postgresql://`` given the psycopg (3) driver.

    Raises:
        CatalogError: the URL cannot be parsed or names an unsupported database.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise CatalogError("the index URL cannot be parsed") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise CatalogError(
            f"unsupported index database {parsed.drivername!r}: "
            "use sqlite:/// or postgresql+psycopg://"
        )
    return parsed


def make_engine(url: URL) -> Engine:
    """Returns an engine for ``url`` that hides bound parameters (PHI) from errors.

    Raises:
        CatalogError: the driver is missing.
    """
    try:
        if url.get_backend_name() == "sqlite":
            return _sqlite_engine(url)
        return _postgresql_engine(url)
    except (ArgumentError, ImportError) as exc:
        raise CatalogError(f"cannot use the index database: {type(exc).__name__}") from exc


def _postgresql_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
    return create_engine(
        url,
        connect_args=connect_args,
        hide_parameters=True,
        pool_size=_POOL_SIZE,
        max_overflow=_POOL_OVERFLOW,
        pool_pre_ping=True,  # survive a database restart
    )


def _sqlite_engine(url: URL) -> Engine:
    connect_args = {"check_same_thread": False, "timeout": _BUSY_TIMEOUT_S}
    if url.database in (None, "", ":memory:"):
        # One shared connection, or each connection would see its own empty database.
        engine = create_engine(
            url, connect_args=connect_args, hide_parameters=True, poolclass=StaticPool
        )
    else:
        engine = create_engine(
            url,
            connect_args=connect_args,
            hide_parameters=True,
            pool_size=_POOL_SIZE,
            max_overflow=_POOL_OVERFLOW,
        )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # The driver's own transaction handling skips BEGIN for SELECTs; _sqlite_on_begin
    # emits BEGIN itself instead, so reads are consistent and writes can be IMMEDIATE.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_S * 1000}")
        # WAL: readers never block the writer. FULL: a commit is on disk (WAL synced)
        # before it returns, because the node acknowledges C-STORE only after it.
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


class WriterLock:
    """The writer lock of one SQLite file: a thread lock for this process's writers, then,
    for a file on disk, an exclusive ``flock`` on ``<file>-writer.lock`` for the writers of
    other processes (the receivers, the uploader, the workers of one node). Without it a
    second process's writer finds the database busy and SQLite's busy handler polls with
    sleeps of 1 to 100 ms; a flock wakes it as soon as the lock is let go. The lock file is
    opened for each hold and closed after it (no descriptor kept per database)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._thread = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        self._thread.acquire()
        if self.path is not None:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            except OSError:  # a read-only folder: SQLite's own busy handling still holds
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                os.close(fd)
                return self
            self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock
        self._thread.release()


def sqlite_lock_for(url: URL) -> WriterLock:
    """Returns the process-wide writer lock of this SQLite database file."""
    database = url.database or ":memory:"
    key = database if database == ":memory:" else str(Path(database).resolve())
    with _sqlite_locks_guard:
        lock = _sqlite_locks.get(key)
        if lock is None:
            lock = _sqlite_locks[key] = WriterLock(
                None if database == ":memory:" else Path(f"{key}-writer.lock"))
        return lock
