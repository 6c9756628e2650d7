"""DIMSE status codes the node sends, named (PS3.4 B.2.3, PS3.7 C)."""

from __future__ import annotations

import enum

from node.errors import (
    CatalogError,
    InconsistentError,
    IngestError,
    MalformedError,
    StoreError,
    UidMismatchError,
)


class Status(enum.IntEnum):
    SUCCESS = 0x0000
    # A7xx Refused, out of resources: the sender should retry later.
    OUT_OF_RESOURCES = 0xA700
    STORE_UNAVAILABLE = 0xA701
    INDEX_UNAVAILABLE = 0xA702
    # A9xx Error: data set does not match SOP class.
    DATASET_MISMATCH = 0xA900
    # Cxxx Error: cannot understand.
    CANNOT_UNDERSTAND = 0xC000
    UID_MISMATCH = 0xC001


def status_for(exc: BaseException) -> Status:
    """The one place where an exception becomes a C-STORE status."""
    if isinstance(exc, MalformedError):
        return Status.CANNOT_UNDERSTAND
    if isinstance(exc, UidMismatchError):
        return Status.UID_MISMATCH
    if isinstance(exc, InconsistentError):
        return Status.DATASET_MISMATCH
    if isinstance(exc, StoreError):
        return Status.STORE_UNAVAILABLE
    if isinstance(exc, CatalogError):
        return Status.INDEX_UNAVAILABLE
    if isinstance(exc, IngestError):
        return Status.CANNOT_UNDERSTAND
    return Status.OUT_OF_RESOURCES
