"""Chunked AES-GCM objects: the on-store format of every encrypted object.

Layout (all integers big-endian)::

    header  32 bytes
      0   4  magic        b"SNEO"
      4   1  version      1
      5   3  reserved     zero
      8   4  key id       uint32, the keyring key the object was written under
     12   4  chunk size   uint32, plaintext bytes per chunk (every chunk but the last is full)
     16  16  salt         random, one per object
    chunk 0 ciphertext ‖ 16-byte tag
    chunk 1 ciphertext ‖ 16-byte tag
    ...
    final chunk ciphertext (0..chunk size bytes) ‖ 16-byte tag

Keys and nonces. Each object gets its own AES key::

    subkey = HKDF-SHA256(ikm=master key, salt=header salt, info=b"support-node object v1")

truncated to the master key's length (16 or 32 bytes). Because the subkey is unique per object
(128-bit random salt), the 96-bit GCM nonce can be a counter without any risk of reuse across
objects: nonce = chunk index as 11 bytes ‖ 1 byte "last chunk" flag (0x01 on the final chunk,
0x00 elsewhere) — the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015).

Associated data of every chunk = the 32 header bytes ‖ the object's logical path (UTF-8).

What that buys (each case raises IntegrityError, never wrong bytes):

- wrong key, or a keyring without the key id: the tags do not verify (or the id is unknown);
- a flipped byte anywhere: the header is in every chunk's AAD, body and tags are authenticated;
- reordered chunks: the index is in the nonce;
- truncation: the chunk count is derived from the object's size, so whatever chunk is last by
  size is opened with the "last" flag; if it was not written as the last chunk it fails. Bytes cut
  from inside the final chunk break its tag or leave a length no valid object can have;
- appended bytes: they change the derived layout (or form a tag-less stub), so the last chunk by
  size fails;
- an object moved or copied to another path: the path is in the AAD.

Sizes. With S = chunk size + 16 and B = object size - 32, the object has n = ceil(B / S) chunks
and the plaintext is B - 16 n bytes; an empty plaintext is a single empty final chunk (B = 16), and
only that case has an empty final chunk. So the plaintext size of an object is known from its
stored size and its chunk size alone, without reading it (`plaintext_size`).

Ranges. A range read decrypts only the chunks the range covers
(`node.crypto.reader.DecryptingReader`). A range that
does not reach the end of the object is authentic, but does not prove the object is complete; a
read that reaches the end does.
"""

from __future__ import annotations

import hmac
import secrets
import struct
from dataclasses import dataclass
from typing import TypeAlias

from Crypto.Cipher import AES

from node.crypto.keyring import Key, Keyring
from node.errors import IntegrityError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "TAG_SIZE",
    "Encryptor",
    "ObjectHeader",
    "ciphertext_size",
    "decrypt",
    "encrypt",
    "encrypt_to_buffer",
    "parse_header",
    "plaintext_size",
]

#: What the functions here accept as bytes (collections.abc.Buffer is 3.12+).
Buffer: TypeAlias = bytes | bytearray | memoryview

MAGIC = b"SNEO"
FORMAT_VERSION = 1
#: Plaintext bytes per chunk unless told otherwise.
DEFAULT_CHUNK_SIZE = 1 << 20
#: Largest chunk size written or accepted (bounds the memory one chunk needs).
MAX_CHUNK_SIZE = 1 << 30
TAG_SIZE = 16
HKDF_INFO = b"support-node object v1"
SALT_SIZE = 16
_HEADER = struct.Struct(">4sB3sII16s")
HEADER_SIZE = _HEADER.size  # 32
_RESERVED = b"\x00\x00\x00"
_NONCE_INDEX_BYTES = 11
_MAX_CHUNKS = 1 << (8 * _NONCE_INDEX_BYTES)


# -- header, sizes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectHeader:
    """The parsed fixed header of an object. `raw` is the exact 32 bytes (part of the AAD)."""

    key_id: int
    chunk_size: int
    salt: bytes
    raw: bytes
    version: int = FORMAT_VERSION


def parse_header(data: Buffer, path: str) -> ObjectHeader:
    """Parse the first `HEADER_SIZE` bytes of `data`.

    Raises IntegrityError (naming `path`) if they are missing or are not a version-1 header.
    Nothing here is authenticated yet: the header is checked again by every chunk's tag.
    """
    mv = memoryview(data).cast("B")
    if len(mv) < HEADER_SIZE:
        raise IntegrityError(f"object is truncated (no complete header): {path}")
    raw = bytes(mv[:HEADER_SIZE])
    magic, version, reserved, key_id, chunk_size, salt = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise IntegrityError(f"not an encrypted object (bad magic): {path}")
    if version != FORMAT_VERSION or reserved != _RESERVED:
        raise IntegrityError(f"unsupported object format version {version}: {path}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError(f"object header is corrupt (chunk size): {path}")
    return ObjectHeader(key_id, chunk_size, salt, raw, version)


def object_layout(chunk_size: int, body_size: int) -> tuple[int, int] | None:
    """(number of chunks, final chunk's ciphertext length) for a body of `body_size` bytes after
    the header, or None if no object written with `chunk_size` can have that size."""
    stride = chunk_size + TAG_SIZE
    if body_size < TAG_SIZE:
        return None
    n = -(-body_size // stride)
    final = body_size - (n - 1) * stride - TAG_SIZE
    if final < 0 or (n > 1 and final == 0):
        return None
    return n, final


def plaintext_size(ciphertext_size: int, chunk_size: int) -> int | None:
    """Plaintext size of an object of `ciphertext_size` stored bytes written with `chunk_size`,
    or None if that size is impossible for such an object (corrupt, or another chunk size)."""
    layout = object_layout(chunk_size, ciphertext_size - HEADER_SIZE)
    if layout is None:
        return None
    n, final = layout
    return (n - 1) * chunk_size + final


def ciphertext_size(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Stored size of a `plaintext_size`-byte plaintext written with `chunk_size`."""
    n = max(1, -(-plaintext_size // chunk_size))
    return HEADER_SIZE + plaintext_size + n * TAG_SIZE


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be an int in 1..{MAX_CHUNK_SIZE}")


def _derive_subkey(master: bytes, salt: bytes, length: int) -> bytes:
    # HKDF-SHA256 (RFC 5869) with one expand block, enough for 16- or 32-byte keys; hmac.digest is
    # the C fast path (Crypto.Protocol.KDF.HKDF gives the same bytes, several times slower).
    prk = hmac.digest(salt, master, "sha256")
    return hmac.digest(prk, HKDF_INFO + b"\x01", "sha256")[:length]


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(_NONCE_INDEX_BYTES, "big") + (b"\x01" if last else b"\x00")


def _path_bytes(path: str) -> bytes:
    if not isinstance(path, str):
        raise TypeError("path must be a str")
    return path.encode("utf-8")


class _ChunkCipher:
    """Seals or opens chunks of one object: holds the subkey and the AAD, one AES object per
    chunk (a GCM object cannot be reused with another nonce)."""

    __slots__ = ("_subkey", "_aad", "_path")

    def __init__(self, key: Key, header: ObjectHeader, path: str) -> None:
        self._subkey = _derive_subkey(key.material, header.salt, key.bits // 8)
        self._aad = header.raw + _path_bytes(path)
        self._path = path

    def seal_into(self, index: int, last: bool, plaintext: memoryview, out: memoryview) -> None:
        """Write ciphertext ‖ tag of `plaintext` into `out` (len(plaintext) + 16 bytes)."""
        cipher = AES.new(self._subkey, AES.MODE_GCM, nonce=_nonce(index, last), mac_len=TAG_SIZE)
        cipher.update(self._aad)
        n = len(plaintext)
        cipher.encrypt(plaintext, output=out[:n])
        out[n : n + TAG_SIZE] = cipher.digest()

    def open(self, index: int, last: bool, sealed: memoryview) -> bytes:
        """Plaintext of one chunk (`sealed` = ciphertext ‖ tag). Raises IntegrityError."""
        cipher = AES.new(self._subkey, AES.MODE_GCM, nonce=_nonce(index, last), mac_len=TAG_SIZE)
        cipher.update(self._aad)
        n = len(sealed) - TAG_SIZE
        try:
            return cipher.decrypt_and_verify(sealed[:n], sealed[n:])
        except ValueError:
            raise IntegrityError(f"object failed authentication: {self._path}") from None


def _new_header(key: Key, chunk_size: int) -> ObjectHeader:
    salt = secrets.token_bytes(SALT_SIZE)
    raw = _HEADER.pack(MAGIC, FORMAT_VERSION, _RESERVED, key.id, chunk_size, salt)
    return ObjectHeader(key.id, chunk_size, salt, raw)


def chunk_opener(header: ObjectHeader, keyring: Keyring, path: str) -> _ChunkCipher:
    # lookup() reloads a followed key file once for an unknown id: another process (a
    # rotation) may have rewritten the object under a key this one has not seen yet.
    key = keyring.lookup(header.key_id)
    if key is None:
        raise IntegrityError(
            f"object failed authentication (key id {header.key_id} not in keyring): {path}"
        )
    return _ChunkCipher(key, header, path)


# -- one-shot ---------------------------------------------------------------------------------


def encrypt(plaintext: Buffer, key: Key, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """Return the object bytes for `plaintext`, written under `key` and bound to `path`.

    Raises ValueError for a chunk size outside 1..MAX_CHUNK_SIZE. `encrypt_to_buffer` does the
    same without the final copy into an immutable `bytes`.
    """
    return bytes(encrypt_to_buffer(plaintext, key, path, chunk_size))


def encrypt_to_buffer(
    plaintext: Buffer, key: Key, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> bytearray:
    """Like `encrypt`, but return the bytearray every chunk was encrypted into (one allocation,
    no copy: at 512 KiB the copy into `bytes` costs more than the encryption on these cores)."""
    _check_chunk_size(chunk_size)
    src = memoryview(plaintext).cast("B")
    size = len(src)
    header = _new_header(key, chunk_size)
    sealer = _ChunkCipher(key, header, path)
    out = bytearray(ciphertext_size(size, chunk_size))
    dst = memoryview(out)
    dst[:HEADER_SIZE] = header.raw
    n = max(1, -(-size // chunk_size))
    pos = HEADER_SIZE
    for i in range(n):
        piece = src[i * chunk_size : (i + 1) * chunk_size]
        end = pos + len(piece) + TAG_SIZE
        sealer.seal_into(i, i == n - 1, piece, dst[pos:end])
        pos = end
    dst.release()
    return out


def decrypt(blob: Buffer, keyring: Keyring, path: str) -> bytes:
    """Return the plaintext of the whole object `blob` stored at `path`.

    Raises IntegrityError (naming `path` only) if it does not authenticate in every chunk, or is
    truncated, extended, or was written for another path or under a key the keyring lacks.
    """
    mv = memoryview(blob).cast("B")
    header = parse_header(mv, path)
    layout = object_layout(header.chunk_size, len(mv) - HEADER_SIZE)
    if layout is None:
        raise IntegrityError(f"object is truncated or extended: {path}")
    n, _ = layout
    opener = chunk_opener(header, keyring, path)
    stride = header.chunk_size + TAG_SIZE
    if n == 1:
        return opener.open(0, True, mv[HEADER_SIZE:])  # no copy beyond the decryption itself
    pieces = []
    for i in range(n):
        start = HEADER_SIZE + i * stride
        pieces.append(opener.open(i, i == n - 1, mv[start : start + stride]))
    return b"".join(pieces)


# -- streaming write --------------------------------------------------------------------------


class Encryptor:
    """Incremental encryption of one object: `update(data)` returns the ciphertext that is ready
    (the header first), `finalize()` the rest, each as a fresh bytearray the caller owns.
    Concatenated, the outputs form an object that `decrypt` accepts.

    A full chunk is held back until more data arrives, because only then is it known not to be
    the last one; so at most one chunk of plaintext is buffered.
    """

    def __init__(self, key: Key, path: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        """Raises ValueError for a chunk size outside 1..MAX_CHUNK_SIZE."""
        _check_chunk_size(chunk_size)
        self.key_id = key.id
        self.chunk_size = chunk_size
        self.header = _new_header(key, chunk_size)
        self._sealer = _ChunkCipher(key, header=self.header, path=path)
        self._buf = bytearray()
        self._index = 0
        self._header_out = False
        self._done = False
        #: Plaintext bytes taken so far.
        self.plaintext_size = 0

    def update(self, data: Buffer) -> bytearray:
        """Take more plaintext; return the ciphertext completed by it (may be empty).

        Raises ValueError after `finalize`.
        """
        if self._done:
            raise ValueError("Encryptor already finalized")
        src = memoryview(data).cast("B")
        self.plaintext_size += len(src)
        cs = self.chunk_size
        ready: list[memoryview] = []  # complete, not-last chunks, in order
        if self._buf:
            take = src[: cs - len(self._buf)]
            self._buf += take
            src = src[len(take) :]
            if len(self._buf) < cs or not src:
                return self._emit(ready)
            # The buffered chunk is full and more follows, so it is not the last one.
            full, self._buf = self._buf, bytearray()
            ready.append(memoryview(full))
        while len(src) > cs:
            ready.append(src[:cs])
            src = src[cs:]
        self._buf += src
        return self._emit(ready)

    def finalize(self) -> bytearray:
        """Seal the buffered rest as the final chunk and return the last ciphertext.

        Raises ValueError if called twice.
        """
        if self._done:
            raise ValueError("Encryptor already finalized")
        self._done = True
        last = memoryview(self._buf)
        out = self._emit([last], last_chunk=True)
        last.release()
        self._buf = bytearray()
        return out

    def _emit(self, chunks: list[memoryview], last_chunk: bool = False) -> bytearray:
        head = 0 if self._header_out else HEADER_SIZE
        total = head + sum(len(c) + TAG_SIZE for c in chunks)
        out = bytearray(total)
        dst = memoryview(out)
        if head:
            dst[:HEADER_SIZE] = self.header.raw
            self._header_out = True
        pos = head
        for j, chunk in enumerate(chunks):
            end = pos + len(chunk) + TAG_SIZE
            is_last = last_chunk and j == len(chunks) - 1
            self._sealer.seal_into(self._index, is_last, chunk, dst[pos:end])
            self._index += 1
            pos = end
        if self._index >= _MAX_CHUNKS:
            raise ValueError("object has too many chunks")
        dst.release()
        return out
