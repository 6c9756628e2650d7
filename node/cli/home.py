"""Is this folder a node's home? Checked before a command creates a key file.

A home is made by ``init`` (or ``serve --init``): its key file reads every object and the
pseudonyms of every patient. A mistyped ``--home`` must not quietly become a second, empty
node with a new key; a home whose key file is missing but whose store or index holds data
must never get a new key, which could read none of it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from node.errors import KeyringError
from node.settings import Settings
from node.store.modes import sqlite_file


def _local_store(url: str) -> Path | None:
    parts = urlsplit(url)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def data_without_keys(settings: Settings) -> list[str]:
    """What holds data in a home that has no key file: ``store /x/store``, ``index
    /x/index.sqlite``, ``index postgresql+psycopg://node:***@db/x`` (a database server's
    index that lists instances: another node of the same store made them, as when a second
    node is added beside a running one). An S3 store is not asked. Empty when the key file
    exists."""
    if settings.keys.file.exists():
        return []
    found = []
    store = _local_store(settings.store.url)
    if store is not None and store.is_dir() and any(p.is_file() for p in store.rglob("*")):
        found.append(f"store {store}")
    index = sqlite_file(settings.index.url)
    if index is not None and index.is_file() and index.stat().st_size > 0:
        found.append(f"index {index}")
    elif (index is None and not settings.index.url.startswith("sqlite")
          and _server_index_has_instances(settings.index.url)):
        found.append(f"index {_without_password(settings.index.url)}")
    return found


def _server_index_has_instances(url: str) -> bool:
    """Whether a database server's index lists any instance. False when it has no tables
    yet, or cannot be reached or parsed now (creating the index fails later, loudly)."""
    from sqlalchemy import func, inspect, select
    from sqlalchemy.exc import SQLAlchemyError

    from node.errors import CatalogError
    from node.index import schema
    from node.index.engine import make_engine, normalise_url

    try:
        engine = make_engine(normalise_url(url))
    except CatalogError:
        return False
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(schema.instances.name):
                return False
            stmt = select(func.count()).select_from(schema.instances)
            return bool(conn.scalar(stmt))
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def _without_password(url: str) -> str:
    from node.errors import CatalogError
    from node.index.engine import normalise_url

    try:
        return normalise_url(url).render_as_string(hide_password=True)
    except CatalogError:
        return "(the configured index.url)"


def check_new_keys(settings: Settings) -> None:
    """Before creating a key file: refuses when the home already holds data.

    Raises KeyringError naming the key file and what holds the data.
    """
    found = data_without_keys(settings)
    if found:
        raise KeyringError(
            f"key file not found: {settings.keys.file}, but {' and '.join(found)} hold "
            "data that only that key file can read; a new key would read none of it. "
            "Restore the key file (from your backup, or copy it from another node of this "
            "store and index), or give the right --home or keys.file")


def require_home(settings: Settings, init: bool, command: str) -> None:
    """A command that would create a key file (``serve``) runs in a home ``init`` made,
    or creates it when ``init`` is True. Raises KeyringError otherwise."""
    check_new_keys(settings)
    if init or settings.keys.file.exists():
        return
    home = settings.home
    raise KeyringError(
        f"{home} is not a node's home (no key file {settings.keys.file}): create it with "
        f"`support-node init --home {home}`, or `support-node {command} --init`; or give "
        "the node's --home")
