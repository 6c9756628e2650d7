"""DIMSE status codes the node sends, named (PS3.4 B.2.3, PS3.7 C)."""

from __future__ import annotations

import enum

from node.access import NotAllowedError, NotAuthenticatedError
from node.errors import (
    CatalogError,
    InconsistentError,
    IngestError,
    MalformedError,
    StoreError,
    TooLargeError,
    UidMismatchError,
)
from node.index.query import QueryLevelError, QueryValueError


class Status(enum.IntEnum):
    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCELLED = 0xFE00
    # PS3.7 C.5.x: refused, not authorised (Q/R callers without the right).
    REFUSED_NOT_AUTHORISED = 0x0124
    # A7xx Refused, out of resources: the sender should retry later.
    OUT_OF_RESOURCES = 0xA700
    STORE_UNAVAILABLE = 0xA701
    INDEX_UNAVAILABLE = 0xA702
    # A9xx Error: data set does not match SOP class.
    DATASET_MISMATCH = 0xA900
    # Cxxx Error: cannot understand.
    CANNOT_UNDERSTAND = 0xC000
    UID_MISMATCH = 0xC001
    # Q/R failures, unable to process (PS3.4 C.4.1.1.4, C.4.2.1.5).
    FIND_UNABLE = 0xC001
    RETRIEVE_UNABLE = 0xC002


def status_for(exc: BaseException) -> Status:
    """The one place where an exception becomes a C-STORE status."""
    if isinstance(exc, TooLargeError):
        return Status.OUT_OF_RESOURCES  # 0xA700: refused, out of resources
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


# Q/R: exception type -> status, most specific first (a test checks every query error and
# access error is here). A database failure differs by service: 0xC001 FIND, 0xC002 retrieve.
_QR_STATUS: tuple[tuple[type[BaseException], Status], ...] = (
    (QueryLevelError, Status.DATASET_MISMATCH),  # 0xA900 Identifier does not match SOP Class
    (QueryValueError, Status.CANNOT_UNDERSTAND),  # 0xC000
    (NotAllowedError, Status.REFUSED_NOT_AUTHORISED),
    (NotAuthenticatedError, Status.REFUSED_NOT_AUTHORISED),
)


def qr_status_for(exc: BaseException, retrieve: bool) -> Status:
    """The one place where an exception becomes a C-FIND, C-MOVE or C-GET status."""
    for kind, status in _QR_STATUS:
        if isinstance(exc, kind):
            return status
    return Status.RETRIEVE_UNABLE if retrieve else Status.FIND_UNABLE
