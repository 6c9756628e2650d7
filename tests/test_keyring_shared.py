"""One key file, several processes: rotations under the file's lock, compare-and-swap saves,
key ids never reused, and keyrings that follow the file (new active key, unknown key ids)."""

from __future__ import annotations

import base64
import json
import multiprocessing
from pathlib import Path

import pytest

from node.crypto import aead
from node.crypto.keyring import Keyring
from node.errors import IntegrityError, KeyringError


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    Keyring.create(tmp_path / "keys.json")
    return tmp_path / "keys.json"


def _rotate_after(path: str, barrier: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    Keyring.rotate(path)


def test_rotations_at_once_in_separate_processes_give_distinct_keys(key_file: Path) -> None:
    context = multiprocessing.get_context("spawn")
    n = 6
    barrier = context.Barrier(n)
    procs = [context.Process(target=_rotate_after, args=(str(key_file), barrier))
             for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    doc = json.loads(key_file.read_text())
    assert [k["id"] for k in doc["keys"]] == list(range(1, n + 2))
    assert len({k["material"] for k in doc["keys"]}) == n + 1
    assert doc["active"] == n + 1 and doc["highest_id"] == n + 1
    assert doc["generation"] == n + 1
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["keys.json"]  # no lock file


def test_save_refuses_a_file_changed_since_it_was_read(key_file: Path) -> None:
    mine, theirs = Keyring.load(key_file), Keyring.load(key_file)
    theirs.add()
    theirs.save(key_file)
    mine.add()  # would be "key 2" again, with other material
    with pytest.raises(KeyringError, match="changed since it was read") as err:
        mine.save(key_file)
    assert "material" not in str(err.value)
    assert Keyring.load(key_file).get(2) == theirs.get(2)  # theirs kept, not overwritten


def test_a_key_id_is_never_issued_twice(key_file: Path) -> None:
    doc = json.loads(key_file.read_text())
    doc["highest_id"] = 7  # keys 2..7 were issued once and later removed by hand
    key_file.write_text(json.dumps(doc))
    _, key = Keyring.rotate(key_file)
    assert key.id == 8


def test_a_file_without_generation_or_highest_id_loads(key_file: Path) -> None:
    doc = json.loads(key_file.read_text())
    del doc["generation"], doc["highest_id"]
    key_file.write_text(json.dumps(doc))
    keyring, key = Keyring.rotate(key_file)
    assert key.id == 2 and keyring.active.id == 2
    assert json.loads(key_file.read_text())["generation"] == 1


def test_a_loaded_keyring_follows_a_rotation_by_another_process(key_file: Path) -> None:
    node = Keyring.load(key_file)
    old = aead.encrypt(b"written before", node.active, "h/p/o")
    rotated, new = Keyring.rotate(key_file)  # as `keys rotate` does, elsewhere
    assert node.active.id == new.id  # the next write uses the new key
    blob = aead.encrypt(b"re-encrypted", rotated.active, "h/p/r")
    assert aead.decrypt(blob, Keyring.load(key_file), "h/p/r") == b"re-encrypted"
    assert aead.decrypt(old, node, "h/p/o") == b"written before"


def test_an_unknown_key_id_reloads_the_file(key_file: Path) -> None:
    node = Keyring.load(key_file)  # read before the rotation; reads only from here on
    rotated, _ = Keyring.rotate(key_file)
    blob = aead.encrypt(b"x", rotated.active, "h/p/x")  # an object the rotation rewrote
    assert aead.decrypt(blob, node, "h/p/x") == b"x"
    in_memory = Keyring.generate()
    with pytest.raises(IntegrityError, match="key id 2 not in keyring"):
        aead.decrypt(blob, in_memory, "h/p/x")


def test_refresh_refuses_another_nodes_key_file(key_file: Path, tmp_path: Path) -> None:
    node = Keyring.load(key_file)
    other = Keyring.create(tmp_path / "other.json")
    (tmp_path / "other.json").replace(key_file)  # someone copies another node's file over
    with pytest.raises(KeyringError, match="another pseudonym key"):
        node.refresh()
    doc = json.loads(key_file.read_text())
    doc["pseudonym_key"] = base64.b64encode(node._pseudonym_key).decode()
    key_file.write_text(json.dumps(doc))  # same pseudonym key, other material under id 1
    with pytest.raises(KeyringError, match="other material under key id 1") as err:
        node.refresh()
    assert doc["keys"][0]["material"] not in str(err.value)
    assert node.get(1) != other.get(1)  # what it had is kept
