"""Where the encrypted store's writes land: a temporary file beside the target renamed over it
(local disk, fsync'd when asked), or a buffer written with one ``pipe_file`` (S3, memory).
Both publish a whole object or nothing."""

from __future__ import annotations

import io
import os
import secrets

from fsspec import AbstractFileSystem

TMP_SUFFIX = ".snenc-tmp"  # a sink's temporary files end so (node.store.sweep finds them)


def make_directories(directory: str) -> list[str]:
    """Creates ``directory`` and missing parents, each 0700 (whatever the umask: the names
    are UIDs and pseudonyms, still no one else's business); returns the parents of those it
    made."""
    missing = []
    path = directory
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
    return [os.path.dirname(p) for p in missing]


def fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalSink:
    """A temporary file beside the target, renamed over it on commit."""

    def __init__(self, final: str, fsync: bool, sync_directory: bool = True) -> None:
        directory, base = os.path.split(final)
        # A folder made here (a new study, series, instance) is only durable once the
        # entry in its parent is: those parents are synced on commit too.
        self.synced_directories = [directory, *make_directories(directory)]
        self._final = final
        self._directory = directory
        self.directory = directory
        self._sync_directory = sync_directory
        self._fsync = fsync
        self._tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        # 0600 whatever the umask: ciphertext, but no one else's to copy.
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file: io.FileIO | None = io.FileIO(fd, "wb")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._file is not None
        view = memoryview(data)
        while view:  # FileIO.write may write less than asked
            n = self._file.write(view)
            view = view[n or 0 :]

    def finish(self) -> None:
        if self._file is not None:
            if self._fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def commit(self) -> None:
        self.finish()
        os.replace(self._tmp, self._final)
        if self._fsync and self._sync_directory:
            for directory in self.synced_directories:
                fsync_directory(directory)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


class BufferSink:
    """Ciphertext kept in memory and written with one `pipe_file` on commit."""

    def __init__(self, fs: AbstractFileSystem, final: str) -> None:
        self._fs = fs
        self._final = final
        self._parts: list[bytes | bytearray | memoryview] = []
        self._blob: bytes | bytearray | memoryview | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._parts.append(data)

    def finish(self) -> None:
        if self._blob is None:
            parts, self._parts = self._parts, []
            self._blob = parts[0] if len(parts) == 1 else b"".join(parts)

    def commit(self) -> None:
        self.finish()
        self._fs.pipe_file(self._final, self._blob)
        self._blob = None

    def discard(self) -> None:
        self._parts = []
        self._blob = None
