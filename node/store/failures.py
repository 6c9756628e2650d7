"""Failures of the wrapped filesystem under the encrypted store, recognised and translated once
(node.store.encrypted_fs, its file objects in node.store.encrypted_files).

A missing object stays FileNotFoundError naming the *relative* path; an object that fails
authentication stays IntegrityError; any other failure of the wrapped filesystem (OSError,
botocore errors) becomes StoreError, chained to the original by the caller's `raise ... from`.
"""

from __future__ import annotations

import errno
import sys

from node.errors import IntegrityError, StoreError

__all__ = ["store_errors", "translate"]


def store_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the wrapped store failed". botocore's are included only when it is
    already imported (it is whenever s3fs is in use), so local-only use never pays for it."""
    errors: list[type[BaseException]] = [OSError]
    boto = sys.modules.get("botocore.exceptions")
    if boto is not None:
        errors += [boto.BotoCoreError, boto.ClientError]
    return tuple(errors)


def translate(exc: BaseException, rel: str, action: str) -> BaseException:
    """The exception to raise (from `exc`) for a failure of the wrapped store on `rel`:
    a missing object stays FileNotFoundError and, except on writes, a directory in the way stays
    Is/NotADirectoryError, both naming the relative path; anything else is StoreError."""
    if isinstance(exc, IntegrityError | StoreError):
        return exc
    if action != "write":
        if isinstance(exc, FileNotFoundError):
            return FileNotFoundError(errno.ENOENT, "no such object", rel)
        if isinstance(exc, IsADirectoryError | NotADirectoryError):
            return type(exc)(exc.errno, exc.strerror, rel)
    return StoreError(f"store {action} failed: {rel}")
