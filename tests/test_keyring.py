"""The keyring: file creation and loading, masking, rotation, pseudonyms."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.crypto.keyring import Key, Keyring
from node.errors import KeyringError


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secrets_of(keyring: Keyring) -> list[str]:
    """Every textual form of every key's material and of the pseudonym key."""
    out = []
    blobs = [keyring.get(info.id).material for info in keyring.infos()]
    blobs.append(keyring._pseudonym_key)
    for blob in blobs:
        out += [base64.b64encode(blob).decode(), blob.hex(), repr(blob), str(blob)]
    return out


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


# -- creation and loading ---------------------------------------------------------------------


def test_create_writes_0600_and_loads_back(key_file: Path) -> None:
    created = Keyring.create(key_file)
    assert mode_of(key_file) == 0o600
    loaded = Keyring.load(key_file)
    assert loaded.active == created.active
    assert loaded.active.bits == 128
    assert loaded.pseudonym("x") == created.pseudonym("x")
    doc = json.loads(key_file.read_text())
    assert doc["format"] == 1 and doc["active"] == 1
    assert set(doc["keys"][0]) == {"id", "bits", "created", "material"}
    assert len(base64.b64decode(doc["pseudonym_key"])) == 32
    assert [p.name for p in key_file.parent.iterdir()] == ["keys.json"]  # no temp files left


def test_create_0600_despite_permissive_umask(key_file: Path) -> None:
    old = os.umask(0)
    try:
        Keyring.create(key_file)
    finally:
        os.umask(old)
    assert mode_of(key_file) == 0o600


def test_create_256(key_file: Path) -> None:
    keyring = Keyring.create(key_file, bits=256)
    assert keyring.active.bits == 256 and len(keyring.active.material) == 32
    assert Keyring.load(key_file).active.bits == 256


def test_create_refuses_existing(key_file: Path) -> None:
    Keyring.create(key_file)
    before = key_file.read_bytes()
    with pytest.raises(KeyringError, match="already exists"):
        Keyring.create(key_file)
    assert key_file.read_bytes() == before
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["keys.json"]


def test_create_bad_bits(key_file: Path) -> None:
    with pytest.raises(KeyringError):
        Keyring.create(key_file, bits=192)
    assert not key_file.exists()


def test_create_in_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="cannot write"):
        Keyring.create(tmp_path / "no" / "such" / "keys.json")


# -- load errors --------------------------------------------------------------------------------


def test_load_missing(key_file: Path) -> None:
    with pytest.raises(KeyringError, match="not found") as err:
        Keyring.load(key_file)
    assert str(key_file) in str(err.value)


def test_load_group_readable_refused(key_file: Path) -> None:
    Keyring.create(key_file)
    key_file.chmod(0o640)
    with pytest.raises(KeyringError, match="chmod 600") as err:
        Keyring.load(key_file)
    assert "0640" in str(err.value)
    key_file.chmod(0o604)
    with pytest.raises(KeyringError, match="chmod 600"):
        Keyring.load(key_file)
    key_file.chmod(0o600)
    Keyring.load(key_file)


def test_load_unreadable(key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Keyring.create(key_file)

    def denied(self: Path) -> bytes:  # chmod 000 does not stop root, so fake the refusal
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(KeyringError, match="not readable.*Permission denied"):
        Keyring.load(key_file)


def test_load_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(KeyringError, match="not a regular file"):
        Keyring.load(tmp_path / "d")


def write_doc(path: Path, doc: object) -> None:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    path.chmod(0o600)


def good_doc() -> dict:
    return {
        "format": 1,
        "active": 1,
        "keys": [
            {
                "id": 1,
                "bits": 128,
                "created": "2025-01-01T00:00:00+00:00",
                "material": base64.b64encode(b"k" * 16).decode(),
            }
        ],
        "pseudonym_key": base64.b64encode(b"p" * 32).decode(),
    }


def test_good_doc_loads(key_file: Path) -> None:
    write_doc(key_file, good_doc())
    assert Keyring.load(key_file).active.material == b"k" * 16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: "[1, 2]", "not a JSON object"),
        (lambda d: d.update(format=2), "unsupported format"),
        (lambda d: d.pop("keys") and None, "missing 'keys'"),
        (lambda d: d.pop("pseudonym_key") and None, "missing 'pseudonym_key'"),
        (lambda d: d.update(keys=[]), "no keys"),
        (lambda d: d.update(active=7), "active key id 7"),
        (lambda d: d.update(active="1"), "active"),
        (lambda d: d["keys"][0].update(material="***not base64***"), "not valid base64"),
        (lambda d: d["keys"][0].update(material=base64.b64encode(b"k" * 15).decode()), "length"),
        (lambda d: d["keys"][0].update(bits=192), "bits"),
        (lambda d: d["keys"][0].update(id="one"), "id/bits"),
        (lambda d: d["keys"].append(dict(d["keys"][0])), "appears twice"),
        (lambda d: d.update(pseudonym_key=base64.b64encode(b"p" * 16).decode()), "32 bytes"),
        (lambda d: d["keys"].append("key"), "key entry 1"),
    ],
)
def test_load_malformed(key_file: Path, change: Callable[[dict], Any], message: str) -> None:
    """`change` edits the document in place, or returns a whole replacement text."""
    doc = good_doc()
    result = change(doc)
    write_doc(key_file, result if isinstance(result, str) else doc)
    with pytest.raises(KeyringError, match=message) as err:
        Keyring.load(key_file)
    text = str(err.value)
    assert str(key_file) in text
    for secret in (
        base64.b64encode(b"k" * 16).decode(),
        "kkkk",
        base64.b64encode(b"p" * 32).decode(),
    ):
        assert secret not in text
    assert err.value.__cause__ is None  # nothing (e.g. the JSON document) travels along


# -- masking -------------------------------------------------------------------------------------


def test_repr_and_str_mask_material() -> None:
    keyring = Keyring.generate()
    keyring.add(bits=256)
    shown = " ".join(
        [repr(keyring), str(keyring), f"{keyring}"]
        + [f(keyring.get(i.id)) for i in keyring.infos() for f in (repr, str, "{}".format)]
        + [repr(keyring.infos())]
    )
    assert "Key(id=1, bits=128, material='**********')" in shown
    for secret in secrets_of(keyring):
        assert secret not in shown


def test_unknown_key_id() -> None:
    keyring = Keyring.generate()
    with pytest.raises(KeyringError, match="no key with id 9"):
        keyring.get(9)
    assert 9 not in keyring and 1 in keyring


def test_key_validation() -> None:
    with pytest.raises(KeyringError):
        Key(1, 128, b"short")
    with pytest.raises(KeyringError):
        Key(0, 128, b"k" * 16)
    with pytest.raises(KeyringError):
        Key(2**32, 128, b"k" * 16)
    with pytest.raises(KeyringError):
        Key(1, 192, b"k" * 24)
    with pytest.raises(AttributeError):
        Key(1, 128, b"k" * 16).id = 2  # type: ignore[misc]


# -- rotation ------------------------------------------------------------------------------------


def test_add_save_load(key_file: Path) -> None:
    keyring = Keyring.create(key_file)
    first = keyring.active
    new = keyring.add()
    assert new.id == 2 and new.bits == 128 and keyring.active == new
    standby = keyring.add(bits=256, activate=False)
    assert standby.id == 3 and keyring.active == new
    assert [(i.id, i.bits, i.active) for i in keyring.infos()] == [
        (1, 128, False),
        (2, 128, True),
        (3, 256, False),
    ]
    assert all(isinstance(i.created, str) and "T" in i.created for i in keyring.infos())
    key_file.chmod(0o600)
    keyring.save(key_file)
    assert mode_of(key_file) == 0o600
    loaded = Keyring.load(key_file)
    assert loaded.get(1) == first and loaded.active == new and loaded.get(3) == standby
    loaded.activate(3)
    assert loaded.active.id == 3
    with pytest.raises(KeyringError):
        loaded.activate(4)
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["keys.json"]


# -- pseudonyms ----------------------------------------------------------------------------------


def test_pseudonym(key_file: Path) -> None:
    keyring = Keyring.create(key_file)
    p = keyring.pseudonym("PAT-001", "HOSPITAL-A")
    assert len(p) == 24 and int(p, 16) >= 0
    assert keyring.pseudonym("PAT-001", "HOSPITAL-A") == p
    assert keyring.pseudonym("PAT-002", "HOSPITAL-A") != p
    assert keyring.pseudonym("PAT-001", "HOSPITAL-B") != p
    assert keyring.pseudonym("ab", "c") != keyring.pseudonym("a", "bc")
    assert keyring.pseudonym("a") != keyring.pseudonym("a", "")
    keyring.add()
    assert keyring.pseudonym("PAT-001", "HOSPITAL-A") == p  # never rotates
    keyring.save(key_file)
    assert Keyring.load(key_file).pseudonym("PAT-001", "HOSPITAL-A") == p
    assert Keyring.generate().pseudonym("PAT-001", "HOSPITAL-A") != p  # keyed
