"""One test suite for EncryptedFileSystem, run over every backend.

A backend's test module subclasses `EncryptedFSSuite` and provides the fixture `raw`: (wrapped
filesystem, root path on it) for an empty root. The suite builds `efs` over it with a small chunk
size (fast, and many chunks per object), and tampers with objects through `raw` directly.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from fsspec import AbstractFileSystem

from node.crypto.aead import DEFAULT_CHUNK_SIZE, HEADER_SIZE, TAG_SIZE
from node.crypto.keyring import Key, Keyring
from node.errors import IntegrityError
from node.store.encrypted_fs import EncryptedFileSystem, Reencrypted

CHUNK = 4096
STRIDE = CHUNK + TAG_SIZE
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, CHUNK * 7 // 2]
MARKER = b"DOE^JANE^DISTINCTIVE-PLAINTEXT-MARKER"


def raw_path(raw: tuple[AbstractFileSystem, str], rel: str) -> str:
    """Where the object for relative path `rel` lies on the wrapped filesystem."""
    _, root = raw
    return f"{root.rstrip('/')}/{rel}" if root else rel


def data_of(size: int, seed: int = 0) -> bytes:
    return os.urandom(size) if seed == 0 else bytes((i * seed) % 251 for i in range(size))


class EncryptedFSSuite:
    """The backend-independent behaviour of EncryptedFileSystem."""

    @pytest.fixture
    def raw(self) -> tuple[AbstractFileSystem, str]:
        raise NotImplementedError("a backend's test module provides `raw`")

    @pytest.fixture
    def keyring(self) -> Keyring:
        return Keyring.generate()

    @pytest.fixture
    def efs(self, raw: tuple[AbstractFileSystem, str], keyring: Keyring) -> EncryptedFileSystem:
        fs, root = raw
        return EncryptedFileSystem(fs, keyring, root=root, chunk_size=CHUNK)

    def put(self, efs: EncryptedFileSystem, path: str, data: bytes) -> None:
        efs.pipe_file(path, data)

    def tamper(self, raw: tuple[AbstractFileSystem, str], rel: str, new: bytes) -> None:
        fs, _ = raw
        fs.pipe_file(raw_path(raw, rel), new)
        fs.invalidate_cache()

    def stored(self, raw: tuple[AbstractFileSystem, str], rel: str) -> bytes:
        fs, _ = raw
        return bytes(fs.cat_file(raw_path(raw, rel)))

    # -- round trips -------------------------------------------------------------------------

    @pytest.mark.parametrize("size", SIZES)
    def test_pipe_cat_roundtrip(self, efs: EncryptedFileSystem, size: int) -> None:
        data = data_of(size)
        efs.pipe_file("h/p/st/se/obj", data)
        assert efs.cat_file("h/p/st/se/obj") == data
        with efs.open("h/p/st/se/obj", "rb") as f:
            assert f.size == size
            assert f.read() == data

    @pytest.mark.parametrize("size", SIZES)
    def test_streamed_write_roundtrip(self, efs: EncryptedFileSystem, size: int) -> None:
        data = data_of(size)
        with efs.open("w/obj", "wb") as f:
            pos = 0
            for step in (1, 1000, CHUNK, 3, CHUNK + 7, 10**9):  # uneven writes across chunks
                f.write(data[pos : pos + step])
                pos += step
        assert efs.cat_file("w/obj") == data

    def test_default_chunk_size(
        self, raw: tuple[AbstractFileSystem, str], keyring: Keyring
    ) -> None:
        fs, root = raw
        efs = EncryptedFileSystem(fs, keyring, root=root)
        assert efs.chunk_size == DEFAULT_CHUNK_SIZE
        for size in (512 * 1024, DEFAULT_CHUNK_SIZE * 3 // 2):
            data = data_of(size)
            efs.pipe_file(f"big/{size}", data)
            assert efs.cat_file(f"big/{size}") == data
            assert efs.info(f"big/{size}")["size"] == size
            assert (
                efs.cat_file(f"big/{size}", DEFAULT_CHUNK_SIZE - 3, DEFAULT_CHUNK_SIZE + 3)
                == (data[DEFAULT_CHUNK_SIZE - 3 : DEFAULT_CHUNK_SIZE + 3])
            )

    def test_pipe_files_writes_each_object_whole(self, efs: EncryptedFileSystem) -> None:
        objects = {"h/p/a/original.dcm": data_of(3 * CHUNK + 5, 1),
                   "h/p/a/description.json": b'{"x": 1}'}
        efs.pipe_files(objects)
        assert {p: efs.cat_file(p) for p in objects} == objects
        assert sorted(efs.find("h")) == sorted(objects)  # no temporary files left

    def test_overwrite_replaces(self, efs: EncryptedFileSystem) -> None:
        efs.pipe_file("o", b"first version")
        efs.pipe_file("o", b"second")
        assert efs.cat_file("o") == b"second"

    # -- ranges ------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("start", "end"),
        [
            (0, CHUNK),
            (CHUNK - 1, CHUNK + 1),
            (CHUNK, 2 * CHUNK),
            (2 * CHUNK - 5, 3 * CHUNK + 5),
            (CHUNK * 7 // 2 - 1, None),
            (-10, None),
            (5, -5),
            (0, 0),
            (3 * CHUNK, 10 * CHUNK),
        ],
    )
    def test_range_reads(self, efs: EncryptedFileSystem, start: int, end: int | None) -> None:
        data = data_of(CHUNK * 7 // 2)
        efs.pipe_file("r", data)
        assert efs.cat_file("r", start, end) == data[start:end]

    def test_seek_read_readinto(self, efs: EncryptedFileSystem) -> None:
        data = data_of(CHUNK * 3 + 100)
        efs.pipe_file("s", data)
        with efs.open("s", "rb") as f:
            assert f.seekable() and f.readable()
            f.seek(CHUNK - 2)
            assert f.read(4) == data[CHUNK - 2 : CHUNK + 2]
            assert f.tell() == CHUNK + 2
            f.seek(-50, os.SEEK_END)
            assert f.read() == data[-50:]
            assert f.read(10) == b""
            f.seek(10)
            f.seek(5, os.SEEK_CUR)
            buf = bytearray(2 * CHUNK)
            assert f.readinto(buf) == 2 * CHUNK
            assert bytes(buf) == data[15 : 15 + 2 * CHUNK]
            f.seek(0)
            assert f.read(CHUNK) + f.read(CHUNK) + f.read() == data

    # -- listing -----------------------------------------------------------------------------

    def test_ls_find_info_sizes(self, efs: EncryptedFileSystem) -> None:
        files = {"a/b/1": 10, "a/b/2": CHUNK, "a/c": CHUNK * 2 + 1, "top": 0}
        for path, size in files.items():
            efs.pipe_file(path, data_of(size))
        assert sorted(efs.ls("", detail=False)) == ["a", "top"]
        listing = {e["name"]: e for e in efs.ls("a", detail=True)}
        assert set(listing) == {"a/b", "a/c"}
        assert listing["a/b"]["type"] == "directory"
        assert listing["a/c"]["type"] == "file"
        assert listing["a/c"]["size"] == CHUNK * 2 + 1
        assert efs.find("") == sorted(files)
        assert efs.find("a") == ["a/b/1", "a/b/2", "a/c"]
        for path, size in files.items():
            assert efs.info(path)["size"] == size
            assert efs.size(path) == size
            assert efs.exists(path)
            assert efs.isfile(path)
        assert {k: v["size"] for k, v in efs.find("", detail=True).items()} == files
        assert efs.du("a") == 10 + CHUNK + CHUNK * 2 + 1
        assert efs.glob("a/*/1") == ["a/b/1"]
        assert efs.glob("a/**") == ["a", "a/b", "a/b/1", "a/b/2", "a/c"]  # fsspec: "a" too
        assert efs.isdir("a/b") and not efs.isfile("a/b")
        assert efs.info("a")["type"] == "directory"
        walked = {root: sorted(fs_) for root, _, fs_ in efs.walk("")}
        assert walked["a/b"] == ["1", "2"]
        assert not efs.exists("a/nope")
        with pytest.raises(FileNotFoundError):
            efs.info("a/nope")

    def test_info_exact_for_other_chunk_size(
        self, efs: EncryptedFileSystem, raw: tuple[AbstractFileSystem, str], keyring: Keyring
    ) -> None:
        data = data_of(CHUNK * 5 + 3)
        efs.pipe_file("other/obj", data)
        fs, root = raw
        other = EncryptedFileSystem(fs, keyring, root=root, chunk_size=1000)
        assert other.info("other/obj")["size"] == len(data)  # from the object's own header
        assert other.cat_file("other/obj", CHUNK - 1, CHUNK + 1) == data[CHUNK - 1 : CHUNK + 1]
        with other.open("other/obj", "rb") as f:
            assert f.size == len(data)

    def test_empty_root_lists_empty(self, efs: EncryptedFileSystem) -> None:
        assert efs.ls("", detail=False) == []
        assert efs.find("") == []
        assert efs.exists("")

    def test_missing_object(self, efs: EncryptedFileSystem) -> None:
        with pytest.raises(FileNotFoundError) as err:
            efs.cat_file("missing/obj")
        assert "missing/obj" in str(err.value)
        with pytest.raises(FileNotFoundError):
            efs.open("missing/obj", "rb")
        with pytest.raises(FileNotFoundError):
            efs.cat_file("missing/obj", 1, 5)
        with pytest.raises(FileNotFoundError):
            efs.rm_file("missing/obj")

    def test_dotdot_refused(self, efs: EncryptedFileSystem) -> None:
        with pytest.raises(ValueError):
            efs.pipe_file("a/../b", b"x")
        efs.pipe_file("./a//b/", b"x")  # normalised to a/b
        assert efs.cat_file("a/b") == b"x"

    # -- removal -----------------------------------------------------------------------------

    def test_rm(self, efs: EncryptedFileSystem) -> None:
        for path in ("d/1", "d/2", "d/e/3", "keep"):
            efs.pipe_file(path, b"x")
        efs.rm_file("d/1")
        assert not efs.exists("d/1")
        efs.rm("d", recursive=True)
        assert efs.find("") == ["keep"]
        efs.rm(["keep"])
        assert efs.find("") == []

    # -- atomic writes -----------------------------------------------------------------------

    def test_exception_in_with_writes_nothing(
        self, efs: EncryptedFileSystem, raw: tuple[AbstractFileSystem, str]
    ) -> None:
        with pytest.raises(RuntimeError), efs.open("atomic/new", "wb") as f:
            f.write(data_of(CHUNK * 3))
            raise RuntimeError("sender went away")
        assert not efs.exists("atomic/new")
        efs.pipe_file("atomic/old", b"old contents")
        with pytest.raises(RuntimeError), efs.open("atomic/old", "wb") as f:
            f.write(b"new contents, half")
            raise RuntimeError("sender went away")
        assert efs.cat_file("atomic/old") == b"old contents"
        fs, root = raw
        fs.invalidate_cache()
        leftovers = [p for p in fs.find(root) if not p.rstrip("/").endswith("atomic/old")]
        assert leftovers == []

    def test_text_mode(self, efs: EncryptedFileSystem) -> None:
        with efs.open("t.json", "w", encoding="utf-8") as f:
            f.write('{"a": "é"}')
        assert efs.read_text("t.json", encoding="utf-8") == '{"a": "é"}'
        with pytest.raises(RuntimeError), efs.open("t2.json", "w") as f:
            f.write("partial")
            raise RuntimeError
        assert not efs.exists("t2.json")

    def test_transaction(self, efs: EncryptedFileSystem) -> None:
        with efs.transaction:
            with efs.open("tx/1", "wb") as f:
                f.write(b"one")
            assert not efs.exists("tx/1")
        assert efs.cat_file("tx/1") == b"one"

    # -- what is stored ----------------------------------------------------------------------

    def test_stored_bytes_hide_plaintext(
        self, efs: EncryptedFileSystem, raw: tuple[AbstractFileSystem, str]
    ) -> None:
        random_part = os.urandom(CHUNK * 2)
        data = MARKER + random_part + MARKER * 3
        efs.pipe_file("secret/obj", data)
        stored = self.stored(raw, "secret/obj")
        assert MARKER not in stored
        # Windows of 48 bytes at a stride of 16 cover every 64-byte run of the plaintext.
        for i in range(0, len(random_part) - 48, 16):
            assert random_part[i : i + 48] not in stored
        # A second write of the same plaintext gives different bytes (fresh salt).
        efs.pipe_file("secret/obj2", data)
        assert self.stored(raw, "secret/obj2")[HEADER_SIZE:] != stored[HEADER_SIZE:]

    # -- tampering ---------------------------------------------------------------------------

    def _victim(self, efs: EncryptedFileSystem, path: str = "h/p/victim") -> bytes:
        data = data_of(CHUNK * 7 // 2)  # 4 chunks, the last a half
        efs.pipe_file(path, data)
        return data

    def assert_rejected(self, efs: EncryptedFileSystem, path: str, keyring: Keyring) -> None:
        with pytest.raises(IntegrityError) as err:
            efs.cat_file(path)
        message = str(err.value)
        assert path in message
        for key in (keyring.get(i) for i, *_ in keyring.infos()):
            assert base64.b64encode(key.material).decode() not in message
            assert key.material.hex() not in message
        with pytest.raises(IntegrityError), efs.open(path, "rb") as f:
            f.read()

    @pytest.mark.parametrize(
        "offset",
        [
            0,  # magic
            4,  # version
            6,  # reserved
            8,  # key id
            14,  # chunk size
            20,  # salt
            HEADER_SIZE,  # first ciphertext byte
            HEADER_SIZE + CHUNK + 3,  # tag of chunk 0
            HEADER_SIZE + STRIDE + 100,  # chunk 1
            -17,  # last ciphertext byte
            -1,  # last tag byte
        ],
    )
    def test_flipped_byte(
        self,
        efs: EncryptedFileSystem,
        raw: tuple[AbstractFileSystem, str],
        keyring: Keyring,
        offset: int,
    ) -> None:
        self._victim(efs)
        stored = bytearray(self.stored(raw, "h/p/victim"))
        stored[offset] ^= 0x01
        self.tamper(raw, "h/p/victim", bytes(stored))
        self.assert_rejected(efs, "h/p/victim", keyring)

    @pytest.mark.parametrize(
        "cut",
        [
            1,  # one tag byte
            TAG_SIZE,  # the final tag
            CHUNK // 2 + TAG_SIZE,  # the whole final chunk: the object now ends on a full chunk
            CHUNK // 2 + TAG_SIZE + STRIDE,  # the last two chunks
            CHUNK // 2 + 100,
        ],
    )
    def test_truncated(
        self,
        efs: EncryptedFileSystem,
        raw: tuple[AbstractFileSystem, str],
        keyring: Keyring,
        cut: int,
    ) -> None:
        self._victim(efs)
        stored = self.stored(raw, "h/p/victim")
        self.tamper(raw, "h/p/victim", stored[:-cut])
        self.assert_rejected(efs, "h/p/victim", keyring)

    @pytest.mark.parametrize(
        "keep", [0, 5, HEADER_SIZE, HEADER_SIZE + TAG_SIZE, HEADER_SIZE + STRIDE]
    )
    def test_truncated_to_prefix(
        self,
        efs: EncryptedFileSystem,
        raw: tuple[AbstractFileSystem, str],
        keyring: Keyring,
        keep: int,
    ) -> None:
        self._victim(efs)
        self.tamper(raw, "h/p/victim", self.stored(raw, "h/p/victim")[:keep])
        self.assert_rejected(efs, "h/p/victim", keyring)

    def test_truncated_empty_object(
        self, efs: EncryptedFileSystem, raw: tuple[AbstractFileSystem, str], keyring: Keyring
    ) -> None:
        efs.pipe_file("empty", b"")
        stored = self.stored(raw, "empty")
        self.tamper(raw, "empty", stored[:-1])
        self.assert_rejected(efs, "empty", keyring)
        flipped = bytearray(stored)
        flipped[-1] ^= 0x80
        self.tamper(raw, "empty", bytes(flipped))
        self.assert_rejected(efs, "empty", keyring)

    @pytest.mark.parametrize("extra", [b"\x00", b"x" * TAG_SIZE, b"y" * (STRIDE + 7)])
    def test_appended(
        self,
        efs: EncryptedFileSystem,
        raw: tuple[AbstractFileSystem, str],
        keyring: Keyring,
        extra: bytes,
    ) -> None:
        self._victim(efs)
        self.tamper(raw, "h/p/victim", self.stored(raw, "h/p/victim") + extra)
        self.assert_rejected(efs, "h/p/victim", keyring)

    def test_reordered_chunks(
        self, efs: EncryptedFileSystem, raw: tuple[AbstractFileSystem, str], keyring: Keyring
    ) -> None:
        self._victim(efs)
        s = self.stored(raw, "h/p/victim")
        c0 = s[HEADER_SIZE : HEADER_SIZE + STRIDE]
        c1 = s[HEADER_SIZE + STRIDE : HEADER_SIZE + 2 * STRIDE]
        self.tamper(raw, "h/p/victim", s[:HEADER_SIZE] + c1 + c0 + s[HEADER_SIZE + 2 * STRIDE :])
        self.assert_rejected(efs, "h/p/victim", keyring)

    def test_swapped_objects(
        self, efs: EncryptedFileSystem, raw: tuple[AbstractFileSystem, str], keyring: Keyring
    ) -> None:
        self._victim(efs, "h/patient-a/obj")
        self._victim(efs, "h/patient-b/obj")
        a, b = self.stored(raw, "h/patient-a/obj"), self.stored(raw, "h/patient-b/obj")
        self.tamper(raw, "h/patient-a/obj", b)
        self.tamper(raw, "h/patient-b/obj", a)
        self.assert_rejected(efs, "h/patient-a/obj", keyring)
        self.assert_rejected(efs, "h/patient-b/obj", keyring)

    def test_raw_copy_to_other_path(
        self, efs: EncryptedFileSystem, raw: tuple[AbstractFileSystem, str], keyring: Keyring
    ) -> None:
        data = self._victim(efs, "h/patient-a/obj")
        self.tamper(raw, "h/patient-b/obj", self.stored(raw, "h/patient-a/obj"))
        self.assert_rejected(efs, "h/patient-b/obj", keyring)
        assert efs.cat_file("h/patient-a/obj") == data

    def test_keyring_without_the_key(
        self, efs: EncryptedFileSystem, raw: tuple[AbstractFileSystem, str]
    ) -> None:
        self._victim(efs)
        fs, root = raw
        other = Keyring.generate()  # also has a key 1, with other material
        efs2 = EncryptedFileSystem(fs, other, root=root, chunk_size=CHUNK)
        self.assert_rejected(efs2, "h/p/victim", other)
        other.add()
        lacking = Keyring([other.get(2)], 2, os.urandom(32))  # no key 1 at all
        efs3 = EncryptedFileSystem(fs, lacking, root=root, chunk_size=CHUNK)
        self.assert_rejected(efs3, "h/p/victim", lacking)

    def test_same_id_other_material(
        self, efs: EncryptedFileSystem, raw: tuple[AbstractFileSystem, str], keyring: Keyring
    ) -> None:
        self._victim(efs)
        fs, root = raw
        wrong = Keyring([Key(1, 128, os.urandom(16))], 1, os.urandom(32))
        self.assert_rejected(EncryptedFileSystem(fs, wrong, root=root), "h/p/victim", wrong)

    def test_range_read_of_tampered_chunk(
        self, efs: EncryptedFileSystem, raw: tuple[AbstractFileSystem, str]
    ) -> None:
        data = self._victim(efs)
        stored = bytearray(self.stored(raw, "h/p/victim"))
        stored[HEADER_SIZE + STRIDE + 10] ^= 0x40  # chunk 1
        self.tamper(raw, "h/p/victim", bytes(stored))
        # Chunk 0 is intact and authentic; chunk 1 is not.
        assert efs.cat_file("h/p/victim", 0, CHUNK) == data[:CHUNK]
        with pytest.raises(IntegrityError):
            efs.cat_file("h/p/victim", CHUNK, CHUNK + 20)

    # -- relocation, copies ------------------------------------------------------------------

    def test_store_moved_to_other_root(
        self, efs: EncryptedFileSystem, raw: tuple[AbstractFileSystem, str], keyring: Keyring
    ) -> None:
        data = self._victim(efs, "h/p/obj")
        fs, root = raw
        new_root = root.rstrip("/") + "-moved"
        fs.pipe_file(f"{new_root}/h/p/obj", self.stored(raw, "h/p/obj"))
        try:
            moved = EncryptedFileSystem(fs, keyring, root=new_root, chunk_size=CHUNK)
            assert moved.cat_file("h/p/obj") == data
        finally:
            fs.rm(new_root, recursive=True)

    def test_cp_mv(self, efs: EncryptedFileSystem) -> None:
        data = data_of(CHUNK * 2 + 5)
        efs.pipe_file("src/obj", data)
        efs.cp_file("src/obj", "dst/obj")
        assert efs.cat_file("dst/obj") == data
        efs.mv("dst/obj", "moved/obj")
        assert efs.cat_file("moved/obj") == data
        assert not efs.exists("dst/obj")
        efs.copy("src", "tree", recursive=True)
        assert efs.cat_file("tree/obj") == data

    def test_cat_pipe_many(self, efs: EncryptedFileSystem) -> None:
        efs.pipe({"m/1": b"one", "m/2": b"two"})
        assert efs.cat(["m/1", "m/2"]) == {"m/1": b"one", "m/2": b"two"}
        assert efs.cat("m/*") == {"m/1": b"one", "m/2": b"two"}

    def test_get_put_file(self, efs: EncryptedFileSystem, tmp_path: Any) -> None:
        data = data_of(CHUNK * 2 + 3)
        src = tmp_path / "in.bin"
        src.write_bytes(data)
        efs.put_file(str(src), "up/in.bin")
        assert efs.cat_file("up/in.bin") == data
        efs.get_file("up/in.bin", str(tmp_path / "out.bin"))
        assert (tmp_path / "out.bin").read_bytes() == data

    def test_instances_not_shared_across_keyrings(
        self, raw: tuple[AbstractFileSystem, str]
    ) -> None:
        fs, root = raw
        one = EncryptedFileSystem(fs, Keyring.generate(), root=root, chunk_size=CHUNK)
        two = EncryptedFileSystem(fs, Keyring.generate(), root=root, chunk_size=CHUNK)
        assert one is not two and one.keyring is not two.keyring
        one.pipe_file("k", b"written with keyring one")
        with pytest.raises(IntegrityError):
            two.cat_file("k")

    # -- key rotation ------------------------------------------------------------------------

    def test_key_rotation(self, efs: EncryptedFileSystem, keyring: Keyring) -> None:
        old = data_of(CHUNK + 9)
        efs.pipe_file("rot/old", old)
        assert efs.key_id("rot/old") == 1
        keyring.add()
        assert keyring.active.id == 2
        assert efs.cat_file("rot/old") == old  # still readable with key 1
        efs.pipe_file("rot/new", b"new")
        assert efs.key_id("rot/new") == 2
        assert efs.reencrypt("rot/new") is Reencrypted.CURRENT
        assert efs.reencrypt("rot/old") is Reencrypted.REWRITTEN
        assert efs.key_id("rot/old") == 2
        assert efs.cat_file("rot/old") == old
        # Readable without key 1 at all now.
        only_new = Keyring([keyring.get(2)], 2, os.urandom(32))
        efs2 = EncryptedFileSystem(efs.fs, only_new, root=efs.root, chunk_size=CHUNK)
        assert efs2.cat_file("rot/old") == old

    def test_reencrypt_keeps_an_object_rewritten_meanwhile(
        self, efs: EncryptedFileSystem, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        efs.pipe_file("rot/busy", b"description, first version")
        keyring.add()
        real = efs.fs.cat_file

        def read_while_the_node_writes(path: str, *args: Any, **kwargs: Any) -> Any:
            blob = real(path, *args, **kwargs)
            if not args and not kwargs:  # the whole-object read of the re-encryption
                efs.pipe_file("rot/busy", b"description, second version (processed)")
            return blob

        monkeypatch.setattr(efs.fs, "cat_file", read_while_the_node_writes)
        assert efs.reencrypt("rot/busy") is Reencrypted.CHANGED
        monkeypatch.undo()
        assert efs.cat_file("rot/busy") == b"description, second version (processed)"
        assert efs.reencrypt("rot/busy") is Reencrypted.CURRENT
