"""The encrypted store over fsspec's in-memory filesystem."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fsspec import AbstractFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from node.errors import StoreError
from node.store.backends import open_backend
from tests.store.abstract import EncryptedFSSuite


class TestMemory(EncryptedFSSuite):
    @pytest.fixture
    def raw(self) -> Iterator[tuple[AbstractFileSystem, str]]:
        fs, root = open_backend(f"memory://enc-{uuid.uuid4().hex[:10]}", {})
        yield fs, root
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_open_backend_memory() -> None:
    fs, root = open_backend("memory://some-store", {})
    assert isinstance(fs, MemoryFileSystem)
    assert root == "/some-store"


def test_open_backend_memory_needs_name() -> None:
    with pytest.raises(StoreError):
        open_backend("memory://", {})
