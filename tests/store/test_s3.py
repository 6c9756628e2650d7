"""The encrypted store over S3 (a real SeaweedFS server from tests/fixtures/seaweed.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fsspec import AbstractFileSystem

from node.crypto.keyring import Keyring
from node.store.backends import open_backend
from node.store.encrypted_fs import EncryptedFileSystem
from tests.fixtures.seaweed import S3Server
from tests.store.abstract import CHUNK, EncryptedFSSuite


class TestS3(EncryptedFSSuite):
    @pytest.fixture
    def raw(self, s3_server: S3Server, s3_root: str) -> Iterator[tuple[AbstractFileSystem, str]]:
        fs = s3_server.filesystem()
        yield fs, s3_root
        fs.invalidate_cache()
        if fs.exists(s3_root):
            fs.rm(s3_root, recursive=True)


def test_wrong_secret_is_refused(s3_server: S3Server) -> None:
    good = s3_server.filesystem()
    good.pipe_file(f"{s3_server.bucket}/auth-probe", b"x")
    bad = s3_server.filesystem(
        secret="not-the-secret", config_kwargs={"retries": {"max_attempts": 1}}
    )
    with pytest.raises(PermissionError):
        bad.cat_file(f"{s3_server.bucket}/auth-probe")
    with pytest.raises(PermissionError):
        bad.pipe_file(f"{s3_server.bucket}/auth-probe-2", b"x")
    anonymous = s3_server.filesystem(key=None, secret=None, anon=True)
    with pytest.raises(PermissionError):
        anonymous.pipe_file(f"{s3_server.bucket}/auth-probe-3", b"x")
    good.rm_file(f"{s3_server.bucket}/auth-probe")


def test_open_backend_s3(s3_server: S3Server, s3_root: str) -> None:
    bucket, prefix = s3_root.split("/", 1)
    fs, root = open_backend(f"s3://{bucket}/{prefix}/", s3_server.options())
    assert root == s3_root
    efs = EncryptedFileSystem(fs, Keyring.generate(), root=root, chunk_size=CHUNK)
    efs.pipe_file("h/p/obj", b"through open_backend")
    assert efs.cat_file("h/p/obj") == b"through open_backend"
    fs.rm(root, recursive=True)


def test_open_backend_creates_bucket(s3_server: S3Server) -> None:
    fs, root = open_backend("s3://fresh-bucket-for-test/x", s3_server.options())
    assert root == "fresh-bucket-for-test/x"
    assert fs.exists("fresh-bucket-for-test")
