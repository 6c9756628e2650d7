"""The chunked AES-GCM object format, on its own (no filesystem)."""

from __future__ import annotations

import io
import os

import pytest
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from node.crypto import aead
from node.crypto.aead import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    MAGIC,
    TAG_SIZE,
    Encryptor,
    ciphertext_size,
    decrypt,
    encrypt,
    parse_header,
    plaintext_size,
)
from node.crypto.keyring import Key, Keyring
from node.crypto.reader import DecryptingReader
from node.errors import IntegrityError

PATH = "default/3f2a9c/1.2.3/1.2.3.4/1.2.3.4.5/original.dcm"


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


class CountingFile(io.BytesIO):
    """A BytesIO that records every read: (offset, length asked)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append((self.tell(), -1 if size is None else size))
        return super().read(size)


# -- round trips, sizes ------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 16, 4096])
@pytest.mark.parametrize("bits", [128, 256])
def test_roundtrip(keyring: Keyring, chunk_size: int, bits: int) -> None:
    key = Key.generate(5, bits)
    kr = Keyring([keyring.active, key], 5, os.urandom(32))
    for size in (
        0,
        1,
        chunk_size - 1,
        chunk_size,
        chunk_size + 1,
        chunk_size * 3 + chunk_size // 2,
    ):
        data = os.urandom(max(size, 0))
        blob = encrypt(data, key, PATH, chunk_size)
        assert len(blob) == ciphertext_size(len(data), chunk_size)
        assert plaintext_size(len(blob), chunk_size) == len(data)
        assert decrypt(blob, kr, PATH) == data
        assert parse_header(blob, PATH).key_id == 5


def test_default_chunk_roundtrip(keyring: Keyring) -> None:
    data = os.urandom(DEFAULT_CHUNK_SIZE * 2 + 12345)
    blob = encrypt(data, keyring.active, PATH)
    assert decrypt(blob, keyring, PATH) == data
    assert parse_header(blob, PATH).chunk_size == DEFAULT_CHUNK_SIZE


def test_empty_is_one_empty_final_chunk(keyring: Keyring) -> None:
    blob = encrypt(b"", keyring.active, PATH, 64)
    assert len(blob) == HEADER_SIZE + TAG_SIZE
    assert decrypt(blob, keyring, PATH) == b""


def test_header_fields(keyring: Keyring) -> None:
    blob = encrypt(b"abc", keyring.active, PATH, 4096)
    header = parse_header(blob, PATH)
    assert blob[:4] == MAGIC and blob[4] == 1
    assert header.key_id == 1 and header.chunk_size == 4096 and len(header.salt) == 16
    assert header.raw == blob[:HEADER_SIZE]
    # A fresh salt each time: same plaintext, key and path give different objects.
    assert encrypt(b"abc", keyring.active, PATH, 4096) != blob


def test_accepts_bytes_like(keyring: Keyring) -> None:
    data = os.urandom(1000)
    for form in (bytearray(data), memoryview(data)):
        assert decrypt(encrypt(form, keyring.active, PATH, 64), keyring, PATH) == data
    assert decrypt(bytearray(encrypt(data, keyring.active, PATH, 64)), keyring, PATH) == data


def test_impossible_sizes() -> None:
    assert plaintext_size(HEADER_SIZE + TAG_SIZE - 1, 16) is None
    assert plaintext_size(HEADER_SIZE + 32 + TAG_SIZE, 16) is None  # empty final after a full one
    assert plaintext_size(HEADER_SIZE + 32 + 5, 16) is None  # tag-less stub
    assert plaintext_size(HEADER_SIZE + 32 + 17, 16) == 17


@pytest.mark.parametrize("chunk_size", [0, -1, aead.MAX_CHUNK_SIZE + 1])
def test_bad_chunk_size(keyring: Keyring, chunk_size: int) -> None:
    with pytest.raises(ValueError):
        encrypt(b"x", keyring.active, PATH, chunk_size)
    with pytest.raises(ValueError):
        Encryptor(keyring.active, PATH, chunk_size)


def test_subkey_is_rfc5869_hkdf() -> None:
    salt = os.urandom(16)
    for length in (16, 32):
        master = os.urandom(length)
        expected = HKDF(master, length, salt, SHA256, context=aead.HKDF_INFO)
        assert aead._derive_subkey(master, salt, length) == expected


# -- streaming encryption ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pieces",
    [
        [],
        [0],
        [16],
        [16, 0],
        [15, 1],
        [16, 16, 16],
        [17, 15, 33, 1],
        [1] * 70,
        [100],
        [5, 200, 3],
    ],
)
def test_encryptor_matches_format(keyring: Keyring, pieces: list[int]) -> None:
    data = os.urandom(sum(pieces))
    enc = Encryptor(keyring.active, PATH, chunk_size=16)
    out = bytearray()
    pos = 0
    for n in pieces:
        out += enc.update(data[pos : pos + n])
        pos += n
    out += enc.finalize()
    assert len(out) == ciphertext_size(len(data), 16)
    assert enc.plaintext_size == len(data)
    assert decrypt(bytes(out), keyring, PATH) == data


def test_encryptor_holds_at_most_one_chunk(keyring: Keyring) -> None:
    enc = Encryptor(keyring.active, PATH, chunk_size=100)
    first = enc.update(os.urandom(100))
    assert len(first) == HEADER_SIZE  # the full chunk may be the last: held back
    assert len(enc.update(os.urandom(1))) == 100 + TAG_SIZE
    assert len(enc.update(os.urandom(350))) == 3 * (100 + TAG_SIZE)
    assert len(enc.finalize()) == 51 + TAG_SIZE


def test_encryptor_finalize_twice(keyring: Keyring) -> None:
    enc = Encryptor(keyring.active, PATH)
    enc.finalize()
    with pytest.raises(ValueError):
        enc.finalize()
    with pytest.raises(ValueError):
        enc.update(b"x")


# -- authentication ------------------------------------------------------------------------------


def small_object(keyring: Keyring) -> tuple[bytes, bytes]:
    data = os.urandom(40)  # chunks of 16, 16, 8
    return data, encrypt(data, keyring.active, PATH, 16)


def assert_rejected(blob: bytes, keyring: Keyring, path: str = PATH) -> None:
    with pytest.raises(IntegrityError) as err:
        decrypt(blob, keyring, path)
    assert path in str(err.value)
    assert keyring.active.material.hex() not in str(err.value)
    with pytest.raises(IntegrityError):
        DecryptingReader(io.BytesIO(blob), keyring, path).read()


def test_every_flipped_bit_in_every_byte(keyring: Keyring) -> None:
    _, blob = small_object(keyring)
    for offset in range(len(blob)):
        for bit in (0x01, 0x80):
            bad = bytearray(blob)
            bad[offset] ^= bit
            assert_rejected(bytes(bad), keyring)


def test_every_truncation(keyring: Keyring) -> None:
    _, blob = small_object(keyring)
    for length in range(len(blob)):
        assert_rejected(blob[:length], keyring)


@pytest.mark.parametrize("extra", [1, 2, 15, 16, 17, 31, 32, 33, 48, 100])
def test_appended(keyring: Keyring, extra: int) -> None:
    _, blob = small_object(keyring)
    assert_rejected(blob + os.urandom(extra), keyring)
    assert_rejected(blob + blob[-extra:], keyring)


def test_final_chunk_dropped_at_boundary(keyring: Keyring) -> None:
    data = os.urandom(48)  # three full chunks of 16
    blob = encrypt(data, keyring.active, PATH, 16)
    for chunks in (1, 2):
        assert_rejected(blob[: HEADER_SIZE + chunks * (16 + TAG_SIZE)], keyring)


def test_other_path(keyring: Keyring) -> None:
    _, blob = small_object(keyring)
    with pytest.raises(IntegrityError) as err:
        decrypt(blob, keyring, PATH.replace("3f2a9c", "000000"))
    assert str(err.value) == f"object failed authentication: {PATH.replace('3f2a9c', '000000')}"


def test_wrong_key_and_missing_key(keyring: Keyring) -> None:
    _, blob = small_object(keyring)
    assert_rejected(blob, Keyring.generate())  # a key 1 with other material
    other = Keyring.generate()
    other.add()
    lacking = Keyring([other.get(2)], 2, os.urandom(32))
    with pytest.raises(IntegrityError, match="key id 1 not in keyring"):
        decrypt(blob, lacking, PATH)


def test_key_chosen_by_header_id(keyring: Keyring) -> None:
    old_data, old_blob = small_object(keyring)
    keyring.add()
    new_blob = encrypt(b"new", keyring.active, PATH)
    assert parse_header(new_blob, PATH).key_id == 2
    assert decrypt(old_blob, keyring, PATH) == old_data
    assert decrypt(new_blob, keyring, PATH) == b"new"


def test_not_an_object(keyring: Keyring) -> None:
    with pytest.raises(IntegrityError, match="bad magic"):
        decrypt(b"\x00" * 100, keyring, PATH)
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(b"", keyring, PATH)


# -- DecryptingReader ----------------------------------------------------------------------------


def test_reader_size_needs_only_the_header(keyring: Keyring) -> None:
    data = os.urandom(10_000)
    raw = CountingFile(encrypt(data, keyring.active, PATH, 1024))
    reader = DecryptingReader(raw, keyring, PATH)
    assert reader.size == 10_000 and reader.chunk_size == 1024 and reader.key_id == 1
    assert raw.reads == [(0, HEADER_SIZE)]


def test_reader_reads_only_covered_chunks(keyring: Keyring) -> None:
    data = os.urandom(10_000)
    raw = CountingFile(encrypt(data, keyring.active, PATH, 1024))
    reader = DecryptingReader(raw, keyring, PATH, ciphertext_size=len(raw.getvalue()))
    raw.reads.clear()
    reader.seek(5 * 1024 + 10)
    assert reader.read(100) == data[5 * 1024 + 10 : 5 * 1024 + 110]
    stride = 1024 + TAG_SIZE
    assert raw.reads == [(HEADER_SIZE + 5 * stride, stride)]
    assert reader.read(100) == data[5 * 1024 + 110 : 5 * 1024 + 210]  # cached chunk
    assert len(raw.reads) == 1
    reader.seek(1000)
    assert reader.read(2100) == data[1000:3100]  # chunks 0..3 in one read
    assert raw.reads[-1] == (HEADER_SIZE, 4 * stride - 0)
    assert len(raw.reads) == 2


def test_reader_everything(keyring: Keyring) -> None:
    data = os.urandom(5000)
    blob = encrypt(data, keyring.active, PATH, 1024)
    with DecryptingReader(io.BytesIO(blob), keyring, PATH) as reader:
        assert reader.read(0) == b""
        assert reader.read(1) == data[:1]
        assert reader.read() == data[1:]
        assert reader.read() == b""
        assert reader.seek(0, io.SEEK_END) == 5000
        assert reader.seek(-3, io.SEEK_CUR) == 4997
        assert reader.read(10) == data[-3:]
        reader.seek(10_000)
        assert reader.read(5) == b""
        with pytest.raises(ValueError):
            reader.seek(-1)
        reader.seek(0)
        assert b"".join(iter(lambda: reader.read(333), b"")) == data
        reader.seek(0)
        buf = bytearray(6000)
        assert reader.readinto(buf) == 5000 and bytes(buf[:5000]) == data
    assert reader.closed
    with pytest.raises(ValueError):
        reader.read()


def test_reader_closes_raw(keyring: Keyring) -> None:
    raw = io.BytesIO(encrypt(b"x", keyring.active, PATH))
    DecryptingReader(raw, keyring, PATH).close()
    assert raw.closed
    raw2 = io.BytesIO(encrypt(b"x", keyring.active, PATH))
    DecryptingReader(raw2, keyring, PATH, close_raw=False).close()
    assert not raw2.closed


def test_reader_truncation_caught_at_end(keyring: Keyring) -> None:
    data = os.urandom(4 * 1024)
    blob = encrypt(data, keyring.active, PATH, 1024)
    cut = blob[: HEADER_SIZE + 3 * (1024 + TAG_SIZE)]  # the last whole chunk dropped
    reader = DecryptingReader(io.BytesIO(cut), keyring, PATH)
    assert reader.size == 3 * 1024  # looks like a valid, shorter object…
    assert reader.read(1024) == data[:1024]  # …whose first chunks are authentic…
    with pytest.raises(IntegrityError):
        reader.read()  # …but reading to the end finds the missing "last" flag
    reader.seek(reader.size)
    with pytest.raises(IntegrityError):
        reader.read()


def test_reader_empty_object_verified(keyring: Keyring) -> None:
    blob = bytearray(encrypt(b"", keyring.active, PATH))
    assert DecryptingReader(io.BytesIO(bytes(blob)), keyring, PATH).read() == b""
    blob[-1] ^= 1
    with pytest.raises(IntegrityError):
        DecryptingReader(io.BytesIO(bytes(blob)), keyring, PATH).read()


def test_reader_short_raw(keyring: Keyring) -> None:
    blob = encrypt(os.urandom(3000), keyring.active, PATH, 1024)
    # The store claims a size the file does not have (object replaced while open).
    reader = DecryptingReader(io.BytesIO(blob[:-100]), keyring, PATH, ciphertext_size=len(blob))
    with pytest.raises(IntegrityError):
        reader.read()
