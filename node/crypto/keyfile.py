"""The key file on disk: read together with its identity, locked, written atomically.

- `read` returns the bytes and the file's identity (`Stamp`: inode, mtime in ns, size) as of that
  read, checked before and after it, so the two belong together. A save always renames a new
  file into place, so any save changes the identity.
- `locked` holds an exclusive `fcntl.flock` on the key file itself (no lock file beside it).
- `write` writes a temporary file 0600 beside the target, fsyncs it, renames it into place
  (or, for a new file, links it: never overwriting) and fsyncs the folder.

Errors are KeyringError naming the file, never its contents.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node.errors import KeyringError

__all__ = ["Stamp", "locked", "read", "stamp_of", "write"]

#: (inode, mtime in ns, size)
Stamp = tuple[int, int, int]
_EXISTS = "key file already exists, not overwritten: {}"


def stamp_of(p: Path) -> Stamp | None:
    """The identity of the file at `p` now (None if it cannot be looked at)."""
    try:
        st = p.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read(p: Path) -> tuple[bytes, Stamp]:
    """The bytes of the key file `p` and its identity when read.

    Raises KeyringError if it is missing, unreadable, not a regular file, or accessible by
    group or others (the message gives the chmod that fixes it).
    """
    for _ in range(10):
        st = _checked_stat(p)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise KeyringError(f"key file not readable: {p} ({exc.strerror})") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp_of(p) == stamp:
            return raw, stamp
    raise KeyringError(f"key file keeps changing while read: {p}")


def _checked_stat(p: Path) -> os.stat_result:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KeyringError(f"key file not found: {p}") from None
    except OSError as exc:
        raise KeyringError(f"key file not readable: {p} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyringError(f"key file is not a regular file: {p}")
    if os.name == "posix" and st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise KeyringError(
            f"key file {p} is accessible by group or others (mode {mode:04o}); "
            f"restrict it with: chmod 600 {p}"
        )
    return st


@contextmanager
def locked(p: Path) -> Iterator[None]:
    """Holds an exclusive flock on the key file `p`. A save replaces the file, so after
    waiting for the lock, check that the locked file is still the one at `p`; if not, lock
    the new one. Raises KeyringError if `p` cannot be opened."""
    for _ in range(100):
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            raise KeyringError(f"key file not found: {p}") from None
        except OSError as exc:
            raise KeyringError(f"key file not readable: {p} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(p).st_ino
            except FileNotFoundError:
                current = -1
            if os.fstat(fd).st_ino == current:
                yield
                return
        finally:
            os.close(fd)  # closing releases the lock
    raise KeyringError(f"key file keeps being replaced; could not lock it: {p}")


def write(path: Path, data: bytes, overwrite: bool) -> None:
    """Writes `data` to `path` atomically with mode 0600; with `overwrite=False`, never over an
    existing file. Raises KeyringError if it cannot (or, without overwrite, if `path` exists)."""
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        # Created 0600 from the start: the material is never on disk with wider rights.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise KeyringError(f"cannot write key file: {path} ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:  # owns (and closes) fd from here on
            os.fchmod(fh.fileno(), 0o600)  # a restrictive umask may have dropped bits
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if `path` exists: an atomic "create, never overwrite".
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyringError(_EXISTS.format(path)) from None
            except OSError:
                # Filesystems without hard links: check, then rename (small race, noted).
                if path.exists():
                    raise KeyringError(_EXISTS.format(path)) from None
                os.replace(tmp, path)
        _fsync_dir(directory)
    except KeyringError:
        raise
    except OSError as exc:
        raise KeyringError(f"cannot write key file: {path} ({exc.strerror})") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
