"""Streaming, seekable reads of one object in the format of ``node.crypto.aead``: only the
chunks a range covers are read and decrypted, and a read that reaches the end proves the
object complete (see that module's docstring for the format and what each failure means)."""

from __future__ import annotations

import io
from typing import IO, Any

from node.crypto.aead import (
    HEADER_SIZE,
    TAG_SIZE,
    Buffer,
    chunk_opener,
    object_layout,
    parse_header,
)
from node.crypto.keyring import Keyring
from node.errors import IntegrityError

__all__ = ["DecryptingReader"]


class DecryptingReader(io.BufferedIOBase):
    """Read-only, seekable plaintext view of an object held in a seekable binary file `raw`.

    Opening reads only the 32-byte header; the plaintext size comes from the header and the
    stored size (`ciphertext_size`, else `raw.size`, else a seek to the end). `seek` + `read(n)`
    reads and decrypts only the chunks the range covers, in one read of `raw`; the last decrypted
    chunk is cached. A read that reaches the end verifies the final chunk, so truncation is caught.

    Raises IntegrityError from the constructor (bad header, impossible size, unknown key id) and
    from reads (a chunk fails authentication, or `raw` ends early).
    """

    def __init__(
        self,
        raw: IO[bytes] | Any,
        keyring: Keyring,
        path: str,
        *,
        ciphertext_size: int | None = None,
        close_raw: bool = True,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._close_raw = close_raw
        self.path = path
        if ciphertext_size is None:
            raw_size = getattr(raw, "size", None)
            ciphertext_size = raw_size if isinstance(raw_size, int) else raw.seek(0, io.SEEK_END)
        #: Stored (encrypted) size of the object.
        self.ciphertext_size: int = int(ciphertext_size)
        header = parse_header(self._read_ciphertext(0, min(HEADER_SIZE, ciphertext_size)), path)
        layout = object_layout(header.chunk_size, ciphertext_size - HEADER_SIZE)
        if layout is None:
            raise IntegrityError(f"object is truncated or extended: {path}")
        self._n, final = layout
        self.header = header
        self.key_id = header.key_id
        self.chunk_size = header.chunk_size
        #: Plaintext size of the object.
        self.size: int = (self._n - 1) * header.chunk_size + final
        self.chunk_opener = chunk_opener(header, keyring, path)
        self._pos = 0
        self._cache_index = -1
        self._cache: bytes = b""
        self._final_verified = False

    # -- subclasses may override to translate the underlying store's errors -----------------

    def _read_ciphertext(self, offset: int, length: int) -> bytes:
        """Exactly `length` stored bytes from `offset`; IntegrityError if `raw` ends first."""
        self._raw.seek(offset)
        data = self._raw.read(length)
        if len(data) < length:
            parts = [data]
            got = len(data)
            while got < length:
                more = self._raw.read(length - got)
                if not more:
                    raise IntegrityError(f"object is truncated: {self.path}")
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return bytes(data) if not isinstance(data, bytes) else data

    # -- io interface ------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to a plaintext offset; positions past the end are allowed (reads give b"")."""
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` plaintext bytes from the current position (all to the end if negative)."""
        self._check_open()
        to_end = size is None or size < 0
        start = self._pos
        end = self.size if to_end else min(self.size, start + size)  # type: ignore[operator]
        if start >= end:
            if (to_end or (size or 0) > 0) and not self._final_verified:
                self._chunks(self._n - 1, self._n - 1)  # a read at the end proves the end
            return b""
        cs = self.chunk_size
        first, last = start // cs, (end - 1) // cs
        pieces: list[bytes | memoryview] = []
        for index, plain in zip(range(first, last + 1), self._chunks(first, last), strict=True):
            lo = max(start - index * cs, 0)
            hi = min(end - index * cs, len(plain))
            pieces.append(plain if lo == 0 and hi == len(plain) else memoryview(plain)[lo:hi])
        self._pos = end
        if len(pieces) == 1 and isinstance(pieces[0], bytes):
            return pieces[0]
        return b"".join(pieces)

    read1 = read

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Buffer) -> int:  # type: ignore[override]
        dst = memoryview(buffer).cast("B")
        data = self.read(len(dst))
        dst[: len(data)] = data
        return len(data)

    readinto1 = readinto  # type: ignore[assignment]

    def close(self) -> None:
        if not self.closed:
            self._cache = b""
            if self._close_raw:
                self._raw.close()
        super().close()

    def __repr__(self) -> str:
        return f"<DecryptingReader path={self.path!r} size={self.size}>"

    # -- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _chunks(self, first: int, last: int) -> list[bytes]:
        """Plaintexts of chunks first..last (inclusive), reading `raw` once for the uncached."""
        out: list[bytes] = []
        index = first
        if self._cache_index == first:
            out.append(self._cache)
            index += 1
        if index <= last:
            stride = self.chunk_size + TAG_SIZE
            offset = HEADER_SIZE + index * stride
            length = min(HEADER_SIZE + (last + 1) * stride, self.ciphertext_size) - offset
            mv = memoryview(self._read_ciphertext(offset, length))
            for j in range(index, last + 1):
                lo = (j - index) * stride
                plain = self.chunk_opener.open(j, j == self._n - 1, mv[lo : lo + stride])
                out.append(plain)
            self._cache_index, self._cache = last, out[-1]
        if last == self._n - 1:
            self._final_verified = True
        return out
