"""Sweeping stale temporary files of a local store.

A local write streams into a hidden `.<name>.<random>.snenc-tmp` beside its target and renames
it into place. A process killed in between (SIGKILL, power loss, a killed re-encryption) leaves
the temporary file behind: hidden from listings, never read, but holding ciphertext and disk
space forever. `sweep_temp_files` removes those older than `max_age` seconds; younger ones may
belong to a write in progress in another process (a receiver, a worker, a CLI command) and are
left alone. Stores other than local disk write whole objects (one PUT) and leave no temporaries.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from fsspec.implementations.local import LocalFileSystem

from node.store.encrypted_fs import TMP_SUFFIX, EncryptedFileSystem

__all__ = ["STALE_AFTER", "Sweep", "find_temp_files", "sweep_temp_files"]

log = logging.getLogger("support_node.store")

#: A temporary file this old (seconds since its last write) belongs to no write in progress.
STALE_AFTER = 3600.0


@dataclass(frozen=True)
class Sweep:
    """Stale temporary files found (paths relative to the store root) and how many were
    removed."""

    found: tuple[str, ...]
    removed: int


def find_temp_files(fs: EncryptedFileSystem, max_age: float = STALE_AFTER,
                    now: float | None = None) -> list[str]:
    """Temporary files under the store root whose last write is older than `max_age`
    seconds, relative to the root, sorted. Empty for stores other than local disk."""
    if not isinstance(fs.fs, LocalFileSystem) or not os.path.isdir(fs.root):
        return []
    limit = (time.time() if now is None else now) - max_age
    found = []
    for directory, _dirs, files in os.walk(fs.root):
        for name in files:
            if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
                continue
            path = os.path.join(directory, name)
            try:
                if os.lstat(path).st_mtime < limit:
                    found.append(os.path.relpath(path, fs.root))
            except FileNotFoundError:
                continue  # renamed into place or removed meanwhile
    return sorted(found)


def sweep_temp_files(fs: EncryptedFileSystem, max_age: float = STALE_AFTER,
                     now: float | None = None) -> Sweep:
    """Removes the stale temporary files `find_temp_files` finds; logs how many (names carry
    UIDs and pseudonyms only, but the count is all an operator needs)."""
    found = find_temp_files(fs, max_age, now)
    removed = 0
    for rel in found:
        try:
            os.unlink(os.path.join(fs.root, rel))
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove a stale temporary file: %s (%s)", rel, exc.strerror)
    if removed:
        log.info("removed %d stale temporary file%s from the store", removed,
                 "" if removed == 1 else "s")
    return Sweep(tuple(found), removed)
