"""The encrypted store over the local disk, plus the local-only parts: fsync, temp files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from node.crypto.keyring import Keyring
from node.errors import StoreError
from node.store.backends import open_backend
from node.store.encrypted_fs import EncryptedFileSystem
from tests.store.abstract import CHUNK, EncryptedFSSuite, data_of


class TestLocal(EncryptedFSSuite):
    @pytest.fixture
    def raw(self, tmp_path: Path) -> tuple[AbstractFileSystem, str]:
        return open_backend(str(tmp_path / "store"), {})


class TestLocalFsync(EncryptedFSSuite):
    """The whole suite again with fsync=True (file and directory fsync on every write)."""

    @pytest.fixture
    def raw(self, tmp_path: Path) -> tuple[AbstractFileSystem, str]:
        return open_backend(f"file://{tmp_path / 'store'}", {})

    @pytest.fixture
    def efs(self, raw: tuple[AbstractFileSystem, str], keyring: Keyring) -> EncryptedFileSystem:
        fs, root = raw
        return EncryptedFileSystem(fs, keyring, root=root, chunk_size=CHUNK, fsync=True)


def test_fsync_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs, root = open_backend(str(tmp_path / "s"), {})
    calls: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    efs = EncryptedFileSystem(fs, Keyring.generate(), root=root, chunk_size=CHUNK, fsync=True)
    efs.pipe_file("a/b", b"durable")
    assert len(calls) == 3  # the file, its new directory, and the parent that gained it
    with efs.open("a/c", "wb") as f:
        f.write(data_of(CHUNK * 3))
    assert len(calls) == 5  # the directory exists now: the file and its directory
    lazy = EncryptedFileSystem(fs, efs.keyring, root=root, chunk_size=CHUNK)
    lazy.pipe_file("a/d", b"not durable")
    assert len(calls) == 5
    assert efs.cat_file("a/b") == b"durable"


def test_objects_are_files_under_root(tmp_path: Path) -> None:
    fs, root = open_backend(f"file://{tmp_path}/s", {})
    efs = EncryptedFileSystem(fs, Keyring.generate(), root=root, chunk_size=CHUNK)
    efs.pipe_file("h/p/1.2.3/original.dcm", b"x" * 100)
    assert (tmp_path / "s/h/p/1.2.3/original.dcm").is_file()
    assert sorted(os.listdir(tmp_path / "s/h/p/1.2.3")) == ["original.dcm"]


def test_streaming_write_uses_hidden_temp_file(tmp_path: Path) -> None:
    fs, root = open_backend(str(tmp_path / "s"), {})
    efs = EncryptedFileSystem(fs, Keyring.generate(), root=root, chunk_size=CHUNK)
    f = efs.open("d/obj", "wb")
    f.write(data_of(CHUNK * 4))
    names = os.listdir(tmp_path / "s/d")
    assert len(names) == 1 and names[0].startswith(".obj.") and names[0].endswith(".snenc-tmp")
    assert efs.ls("d", detail=False) == []  # temp files are not objects
    assert not efs.exists("d/obj")
    f.close()
    assert os.listdir(tmp_path / "s/d") == ["obj"]


def test_abandoned_writer_publishes_nothing(tmp_path: Path) -> None:
    fs, root = open_backend(str(tmp_path / "s"), {})
    efs = EncryptedFileSystem(fs, Keyring.generate(), root=root, chunk_size=CHUNK)
    f = efs.open("d/obj", "wb")
    f.write(b"never closed")
    del f
    import gc

    gc.collect()
    assert os.listdir(tmp_path / "s/d") == []


def test_write_failure_is_store_error(tmp_path: Path) -> None:
    fs, root = open_backend(str(tmp_path / "s"), {})
    efs = EncryptedFileSystem(fs, Keyring.generate(), root=root)
    (tmp_path / "s/blocker").write_bytes(b"a file where a directory is needed")
    with pytest.raises(StoreError):
        efs.pipe_file("blocker/obj", b"x")


def test_open_backend_local(tmp_path: Path) -> None:
    fs, root = open_backend(f"file://{tmp_path}/new/dir", {})
    assert isinstance(fs, LocalFileSystem)
    assert root == str(tmp_path / "new/dir")
    assert (tmp_path / "new/dir").is_dir()
    fs2, root2 = open_backend(str(tmp_path / "plain"), {})
    assert root2 == str(tmp_path / "plain") and (tmp_path / "plain").is_dir()


def test_open_backend_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _, root = open_backend("rel/store", {})
    assert root == str(tmp_path / "rel/store")


def test_open_backend_unknown_scheme() -> None:
    with pytest.raises(StoreError) as err:
        open_backend("ftp://host/x", {"secret": "hunter2-secret"})
    assert "ftp" in str(err.value)
    assert "hunter2" not in str(err.value)
