"""The composition root: the only module that names the concrete classes and wires them.

It builds the protocol-free :class:`~node.core.Core` (:func:`open_core`) and hands it to
the edges: the DIMSE SCP (:func:`start_dimse`) and the HTTP server (:func:`start_web`).
``node.processes`` runs these in processes; the CLI and the Python API open a core here.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from node.access import AccessPolicy
from node.core import Core
from node.crypto.keyring import Keyring
from node.errors import KeyringError
from node.index.audit import AuditLog
from node.index.catalog import Catalog
from node.index.object_versions import ObjectVersions
from node.index.spooled import SpooledRows
from node.index.tokens import Tokens
from node.ingest import Ingest
from node.pressure import Pressure
from node.settings import Settings
from node.store.backends import open_backend
from node.store.encrypted_fs import EncryptedFileSystem
from node.store.modes import sqlite_file
from node.store.spool import SPOOL, SpoolReader, SpoolWriter
from node.store.uploader import Uploader
from node.uid_lock import UidLocks

log = logging.getLogger("support_node")


def make_home(settings: Settings) -> None:
    """Creates the home folder, readable by its owner only: the index holds patient names.
    A SQLite index file is created empty, 0600, before SQLite would create it with the
    umask's mode (its WAL and shared-memory files take the database file's mode)."""
    if not settings.home.exists():
        settings.home.mkdir(mode=0o700, parents=True)
    index = sqlite_file(settings.index.url)
    if index is not None and not index.exists() and index.parent.is_dir():
        try:
            os.close(os.open(index, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # another process made it first


def ensure_keyring(settings: Settings) -> Keyring:
    """Loads the key file, creating it (mode 0600) when there is none yet; when several
    processes start at once, one creates it and the others load it."""
    make_home(settings)
    path = settings.keys.file
    if path.exists():
        return Keyring.load(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        keyring = Keyring.create(path, bits=settings.keys.bits)
    except KeyringError:
        if path.exists():  # lost the race to create it (create never overwrites)
            return Keyring.load(path)
        raise
    log.info("created a new key file at %s", path)
    return keyring


def open_core(settings: Settings, create_keys: bool = False, serving: bool = False) -> Core:
    """Opens the store, the index and the keyring named by ``settings``.

    ``serving``: a process of ``serve`` (a receiver, the web server), which acknowledges
    from the local spool when ``[store] ack = "spool"``; other cores (the CLI, the Python
    API, workers) write straight to the store. Every core reads spooled objects.

    Raises KeyringError (no key file and ``create_keys`` is False), StoreError, CatalogError.
    """
    keyring = ensure_keyring(settings) if create_keys else Keyring.load(settings.keys.file)
    make_home(settings)
    backend, root = open_backend(settings.store.url, dict(settings.store.options))
    fs = EncryptedFileSystem(
        backend, keyring, root=root, chunk_size=settings.store.chunk_size,
        fsync=settings.store.fsync,
    )
    catalog = Catalog(settings.index.url)
    fs.versions = ObjectVersions(catalog, catalog.engine.dialect.name)
    tokens = Tokens(catalog)
    policy = AccessPolicy(settings.dimse, tokens, anonymous_web=settings.http.anonymous_allowed)
    from node.dimse.send import DimseSender  # the DIMSE edge's C-STORE SCU

    locks = UidLocks(settings.home / "run" / "uid-locks", catalog.engine)
    fs.spool = SpoolReader(settings.home / SPOOL, SpooledRows(catalog), locks,
                           wait=settings.store.other_spool_wait)
    writer = SpoolWriter(settings.home / SPOOL) \
        if serving and settings.store.ack == "spool" else None
    audit = AuditLog(catalog)
    ingest = Ingest(fs, catalog, keyring, max_bytes=settings.dimse.max_instance_bytes,
                    locks=locks, audit=audit, spool=writer)
    return Core(settings, keyring, fs, catalog, ingest, tokens, policy,
                sender=DimseSender(settings, fs), audit=audit,
                pressure=_pressure(settings, backend, root, catalog, fs.spool))


def start_uploader(core: Core) -> None:
    """Starts the uploader of the home's spool in this process (one per node: the process
    of ``serve`` that also sweeps); ``core.close()`` stops it."""
    core.uploader = Uploader(core.fs, core.fs.spool,
                             threads=core.settings.store.upload_threads).start()


def _pressure(settings: Settings, backend: Any, root: str, catalog: Catalog,
              spool: SpoolReader) -> Pressure:
    """Watches the home's filesystem, a local store's, the processing queue and the
    spool."""
    from pathlib import Path

    from node.index.jobs import JobQueue

    paths = [settings.home]
    if "file" in (backend.protocol if isinstance(backend.protocol, tuple)
                  else (backend.protocol,)):
        paths.append(Path(root))
    queue = JobQueue(catalog)
    return Pressure(paths, settings.store.min_free_bytes, queue.depth,
                    settings.processing.max_queue, spool_bytes=spool.size,
                    spool_max=settings.store.spool_max_bytes)


def start_dimse(core: Core, shared_port: bool = False) -> Any:
    """Starts the DIMSE SCP (Verification, Storage, Q/R) on ``core``; returns the server
    (``server_address[1]`` is its port, ``shutdown()`` stops it). Raises OSError."""
    from node.dimse import server as dimse_server
    from node.dimse.qr import QRDeps

    qr = QRDeps(core.catalog, core.fs, core.settings, core.policy, core.audit)
    return dimse_server.start(core.settings.dimse, core.ingest, core.policy,
                              shared_port=shared_port, qr=qr, pressure=core.pressure)


def start_web(core: Core, port: int | None = None) -> Any:
    """Starts the HTTP server (DICOMweb, health, metrics) on ``core`` in a thread; returns it
    (``port`` is its port, ``stop()`` stops it). Raises OSError."""
    from node.web.app import build_app
    from node.web.server import WebServer

    server = WebServer(build_app(core), core.settings.http,
                       port=core.settings.http.port if port is None else port)
    server.start()
    return server
