"""The core a running node holds: no protocol in it.

:class:`Core` is what the edges (DIMSE, web, CLI, Python API) and the workers receive:
settings, keyring, the encrypted store, the index, ingest, the web tokens and the access
policy. It is built in one place, :func:`node.wiring.open_core`, the composition root.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.access import AccessPolicy
from node.crypto.keyring import Keyring
from node.index.audit import AuditLog
from node.index.catalog import Catalog
from node.index.tokens import Tokens
from node.ingest import Ingest
from node.pressure import Pressure
from node.sending import Sender
from node.settings import Settings
from node.store.encrypted_fs import EncryptedFileSystem


@dataclass
class Core:
    """Everything a running node holds: settings, keyring, encrypted store, index, ingest,
    tokens and the access policy."""

    settings: Settings
    keyring: Keyring
    fs: EncryptedFileSystem
    catalog: Catalog
    ingest: Ingest
    tokens: Tokens
    policy: AccessPolicy
    sender: Sender | None = None  # "send to PACS"; given by the DIMSE edge (node.wiring)
    audit: AuditLog | None = None  # the audit trail's writer (node.index.audit)
    pressure: Pressure | None = None  # back-pressure: may another instance come in now?
    uploader: Any = None  # the spool's uploader, in the one process of serve that runs it

    def close(self) -> None:
        if self.uploader is not None:
            self.uploader.stop()
        if self.ingest.spool is not None:
            self.ingest.spool.close()
        if self.audit is not None:
            self.audit.close()
        self.catalog.close()
