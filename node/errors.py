"""The project's exceptions, one tree.

    NodeError                      root: anything the node raises on purpose
    ├── ConfigError                a bad or unknown configuration key (names the key)
    ├── KeyringError               missing, unreadable or malformed key file, unknown key id
    ├── StoreError                 the object store failed (I/O, network); retryable
    │   └── IntegrityError         an object failed authentication: wrong key, flipped
    │                              byte, truncation, or moved to another path
    ├── CatalogError               the index failed (database unavailable, locked); retryable
    ├── LibraryError               an unknown model library entry, or not an exported one
    └── IngestError                an instance was refused; the message says why
        ├── MalformedError         not parseable DICOM, or cut short in transit
        └── InconsistentError      header disagrees with the command (SOP Class, pixels)
            └── UidMismatchError   ... or its SOP Instance UID differs from the command's

Builtins are used where their meaning fits (FileNotFoundError for a missing object).
Messages never carry secrets or PHI: UIDs and object keys only.
"""

from __future__ import annotations


class NodeError(Exception):
    """Root of every error the node raises on purpose."""


class ConfigError(NodeError):
    """A configuration key is unknown or its value is invalid; the message names the key."""


class KeyringError(NodeError):
    """The key file is missing, unreadable or malformed, or a key id is unknown."""


class StoreError(NodeError):
    """The object store could not complete an operation. The caller may retry."""


class LibraryError(NodeError):
    """An unknown or unreadable model library entry, or a folder that is not an export."""


class IntegrityError(StoreError):
    """An encrypted object failed authentication. Never returned as wrong bytes."""


class CatalogError(NodeError):
    """The index could not complete an operation. The caller may retry."""


class IngestError(NodeError):
    """An instance was refused at ingest."""


class MalformedError(IngestError):
    """The data set cannot be parsed, or was cut short in transit."""


class InconsistentError(IngestError):
    """The data set disagrees with the command that carried it."""


class TooLargeError(IngestError):
    """The instance is larger than the node accepts (as received or once inflated)."""


class UidMismatchError(InconsistentError):
    """The data set's SOP Instance UID differs from the one in the command."""


class UidCollisionError(NodeError):
    """The instance's study or series UID is indexed under another patient or hospital:
    the instance is kept apart as a conflict, never merged into that study or series."""
