"""The file objects `EncryptedFileSystem.open` returns (node.store.encrypted_fs): a reader
whose store failures become StoreError, the atomic writer, and the text wrapper that discards
a writer left by an exception. A writer publishes a whole object or nothing."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from node.crypto.aead import Encryptor
from node.crypto.reader import DecryptingReader
from node.errors import IntegrityError, StoreError
from node.store.failures import store_errors, translate
from node.store.sinks import BufferSink, LocalSink

if TYPE_CHECKING:
    from node.store.encrypted_fs import EncryptedFileSystem

__all__ = ["EncryptedWriter", "StoreReader", "TextFile"]


class StoreReader(DecryptingReader):
    """DecryptingReader whose store errors become StoreError."""

    def _read_ciphertext(self, offset: int, length: int) -> bytes:
        try:
            return super()._read_ciphertext(offset, length)
        except IntegrityError:
            raise
        except store_errors() as exc:
            raise translate(exc, self.path, "read") from exc


class EncryptedWriter(io.BufferedIOBase):
    """Write-only file for one object. `close()` publishes it atomically; leaving a `with` block
    by an exception, `discard()`, or garbage collection without `close()` publishes nothing.

    With autocommit=False (fsspec transactions) `close()` only finishes it; `commit()`
    publishes and `discard()` drops it. Store failures raise StoreError.
    """

    def __init__(self, efs: EncryptedFileSystem, path: str, autocommit: bool = True) -> None:
        super().__init__()
        self.fs = efs
        self.path = path
        self.autocommit = autocommit
        self._encryptor = Encryptor(efs.keyring.active, path, efs.chunk_size)
        try:
            self._sink: LocalSink | BufferSink | None = efs._sink(path)
        except store_errors() as exc:
            raise translate(exc, path, "write") from exc

    @property
    def key_id(self) -> int:
        return self._encryptor.key_id

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._encryptor.plaintext_size

    def write(self, data: Any) -> int:
        """Take `data`; returns its length. Raises StoreError if the store fails (the object
        is then discarded)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._sink is None:
            raise StoreError(f"write already failed: {self.path}")
        size = memoryview(data).nbytes
        out = self._encryptor.update(data)
        if out:
            self._guarded(self._sink.write, out)
        return size

    def close(self) -> None:
        """Finish the object and (with autocommit) publish it. Raises StoreError."""
        if self.closed:
            return
        try:
            if self._sink is not None:
                sink = self._sink
                self._guarded(sink.write, self._encryptor.finalize())
                self._guarded(sink.finish)
                if self.autocommit:
                    self._guarded(sink.commit)
                    self._sink = None
        finally:
            super().close()

    def commit(self) -> None:
        """Publish a closed writer opened with autocommit=False."""
        if self.autocommit:
            raise RuntimeError("commit() is only for autocommit=False writers")
        if not self.closed:
            self.close()
        if self._sink is not None:
            self._guarded(self._sink.commit)  # as close() commits: a failure discards
            self._sink = None

    def discard(self) -> None:
        """Drop everything written; nothing is published."""
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.discard()
        if not self.closed:
            super().close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()

    def __del__(self) -> None:
        # Never publish from the garbage collector: an unclosed writer is an abandoned one.
        try:
            if not self.closed:
                self.discard()
        except Exception:
            pass

    def _guarded(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, store_errors()):
                raise translate(exc, self.path, "write") from exc
            raise

    def __repr__(self) -> str:
        return f"<EncryptedWriter path={self.path!r}>"


class TextFile(io.TextIOWrapper):
    """Text wrapper that discards (rather than publishes) a writer left by an exception."""

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and isinstance(self.buffer, EncryptedWriter):
            self.buffer.discard()
            return
        super().__exit__(exc_type, exc, tb)
