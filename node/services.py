"""The composition root: the only module that names the concrete classes and wires them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from node.crypto.keyring import Keyring
from node.dimse.qr import QRDeps
from node.index.catalog import Catalog
from node.ingest import Ingest
from node.settings import Settings
from node.store.backends import open_backend
from node.store.encrypted_fs import EncryptedFileSystem

log = logging.getLogger("support_node")


@dataclass
class Services:
    """Everything a running node holds: settings, keyring, encrypted store, index, ingest."""

    settings: Settings
    keyring: Keyring
    fs: EncryptedFileSystem
    catalog: Catalog
    ingest: Ingest

    def close(self) -> None:
        self.catalog.close()

    def qr_deps(self) -> QRDeps:
        """What the Query/Retrieve handlers need: the index, the store, the settings."""
        return QRDeps(self.catalog, self.fs, self.settings)


def make_home(settings: Settings) -> None:
    """Creates the home folder, readable by its owner only: the index holds patient names."""
    if not settings.home.exists():
        settings.home.mkdir(mode=0o700, parents=True)


def ensure_keyring(settings: Settings) -> Keyring:
    """Loads the key file, creating it (mode 0600) when there is none yet."""
    make_home(settings)
    path = settings.keys.file
    if path.exists():
        return Keyring.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keyring = Keyring.create(path, bits=settings.keys.bits)
    log.info("created a new key file at %s", path)
    return keyring


def open_services(settings: Settings, create_keys: bool = False) -> Services:
    """Opens the store, the index and the keyring named by ``settings``.

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
    return Services(settings, keyring, fs, catalog, Ingest(fs, catalog, keyring))
