"""The keyring: numbered AES keys (one active) and the pseudonym key, kept in one 0600 JSON file.

File format (JSON, one object)::

    {"format": 1,
     "active": 2,
     "keys": [{"id": 1, "bits": 128, "created": "2025-01-01T00:00:00+00:00",
               "material": "<base64>"}, ...],
     "pseudonym_key": "<base64 of 32 bytes>",
     "generation": 3,
     "highest_id": 2}

- New objects are written under the active key; old keys stay so old objects still decrypt.
  Rotation = `Keyring.rotate(path)` (a new key becomes active, saved at once); re-encryption is
  the store's job (`node.store.reencrypt`).
- Several processes share one key file (the receivers, the processing workers, the web server,
  a `keys rotate` beside them). Changes are made under an exclusive `fcntl.flock` on the key
  file, read-modify-write: `rotate` re-reads the file under the lock, and `save` refuses
  (compare-and-swap on `generation`, which every save increments) when the file changed since
  this keyring read it. The file is replaced by writing a temporary file, fsync, rename, so a
  reader sees the old file or the new one. `highest_id` is the highest id ever issued: a key id
  is never issued twice, even for a key that was later removed from the file.
- A keyring loaded from a file follows it: `active` checks the file's identity (inode, mtime,
  size: one `stat`) and reloads when it changed, so new objects are written under the key made
  active by another process; `lookup` of an unknown key id reloads too (an object re-encrypted by
  another process). `refresh(force=True)` reloads unconditionally (serve does so on SIGHUP). A
  reload keeps the keys already known and refuses a file whose pseudonym key, or the material of
  a known key id, differs (KeyringError): that is another node's key file, not a rotation.
  Both fields after "pseudonym_key" are optional (files written before they existed load).
- `pseudonym_key` never rotates: object paths are derived from it (patient pseudonyms), so a new
  pseudonym key would move every patient.
- Key material never appears in a repr, a log line or an exception message; messages name the
  file and the key id only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from node.crypto import keyfile
from node.errors import KeyringError

__all__ = ["FORMAT", "PSEUDONYM_HEX_CHARS", "Key", "KeyInfo", "Keyring"]

log = logging.getLogger("support_node.keys")

#: Version of the key file layout.
FORMAT = 1
#: Allowed AES key sizes in bits.
ALLOWED_BITS = (128, 256)
#: Key ids go into the 32-bit field of the object header.
MAX_KEY_ID = 2**32 - 1
#: Pseudonyms are this many hex characters (96 bits) of HMAC-SHA256.
PSEUDONYM_HEX_CHARS = 24
_PSEUDONYM_KEY_BYTES = 32
_MASK = "**********"
_CHANGED = ("key file {} changed since it was read (another `keys` command?); nothing was "
            "saved: run the command again")


def _now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True, repr=False)
class Key:
    """One numbered AES key. `repr`/`str` mask the material.

    Raises KeyringError (from construction) for a bad id, a size other than 128/256 bits, or
    material whose length does not match `bits`.
    """

    id: int
    bits: int
    material: bytes = field(compare=True)
    created: str = field(default_factory=_now_iso, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, int) or isinstance(self.id, bool):
            raise KeyringError("key id must be an integer")
        if not 1 <= self.id <= MAX_KEY_ID:
            raise KeyringError(f"key id {self.id} out of range 1..{MAX_KEY_ID}")
        if self.bits not in ALLOWED_BITS:
            raise KeyringError(f"key {self.id}: bits must be 128 or 256")
        if not isinstance(self.material, bytes) or len(self.material) * 8 != self.bits:
            # Say nothing about the material beyond the fact that its length is wrong.
            raise KeyringError(f"key {self.id}: material length does not match {self.bits} bits")

    @classmethod
    def generate(cls, key_id: int, bits: int = 128) -> Key:
        """Return a new key with fresh random material from the OS CSPRNG."""
        if bits not in ALLOWED_BITS:
            raise KeyringError(f"key {key_id}: bits must be 128 or 256")
        return cls(key_id, bits, secrets.token_bytes(bits // 8))

    def __repr__(self) -> str:
        return f"Key(id={self.id}, bits={self.bits}, material='{_MASK}')"

    __str__ = __repr__


class KeyInfo(NamedTuple):
    """What may be shown about a key: never its material."""

    id: int
    bits: int
    created: str
    active: bool


class Keyring:
    """Numbered keys with one active, plus the non-rotating pseudonym key.

    Build one with `create` (new file), `load` (existing file) or `generate` (in memory only).
    """

    def __init__(self, keys: Iterable[Key], active_id: int, pseudonym_key: bytes,
                 *, highest_id: int = 0, generation: int = 0) -> None:
        """Raises KeyringError if the ids repeat, `active_id` is not among them, there are no
        keys, or the pseudonym key is not 32 bytes. `highest_id`: the highest id ever issued
        (never below the highest present); `generation`: the file's save counter."""
        self._keys: dict[int, Key] = {}
        for key in keys:
            if key.id in self._keys:
                raise KeyringError(f"key id {key.id} appears twice")
            self._keys[key.id] = key
        if not self._keys:
            raise KeyringError("keyring holds no keys")
        if active_id not in self._keys:
            raise KeyringError(f"active key id {active_id} is not in the keyring")
        if not isinstance(pseudonym_key, bytes) or len(pseudonym_key) != _PSEUDONYM_KEY_BYTES:
            raise KeyringError("pseudonym key must be 32 bytes")
        self._active_id = active_id
        self._pseudonym_key = pseudonym_key
        self._highest = max(highest_id, max(self._keys))
        self._generation = generation
        # The file this keyring follows (set by load/create/rotate) and its identity when read.
        self._path: Path | None = None
        self._stamp: keyfile.Stamp | None = None
        self._reloading = threading.Lock()

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def generate(cls, bits: int = 128) -> Keyring:
        """Return a fresh in-memory keyring with key 1 active (nothing is written)."""
        return cls([Key.generate(1, bits)], 1, secrets.token_bytes(_PSEUDONYM_KEY_BYTES))

    @classmethod
    def create(cls, path: str | os.PathLike[str], bits: int = 128) -> Keyring:
        """Create a new key file at `path` (mode 0600, written atomically) and return its keyring.

        Raises KeyringError if the file already exists or cannot be written.
        """
        keyring = cls.generate(bits)
        keyring._generation = 1
        p = Path(path)
        keyring._write(p, overwrite=False)
        keyring._path, keyring._stamp = p, keyfile.stamp_of(p)
        return keyring

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read the key file at `path`; the keyring follows it from then on (module docstring).

        Raises KeyringError if it is missing, unreadable, accessible by group or others
        (fix: chmod 600), or malformed. Messages name the file, never its contents.
        """
        p = Path(path)
        raw, stamp = keyfile.read(p)
        keyring = cls._from_document(raw, p)
        keyring._path, keyring._stamp = p, stamp
        return keyring

    @classmethod
    def _from_document(cls, raw: bytes, p: Path) -> Keyring:
        # `from None` everywhere: a JSONDecodeError carries the whole document (key material)
        # in its `doc` attribute, and no cause should travel with the error.
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise KeyringError(f"key file is not valid JSON: {p}") from None
        if not isinstance(doc, dict):
            raise KeyringError(f"key file is malformed (not a JSON object): {p}")
        if doc.get("format") != FORMAT:
            raise KeyringError(f"key file has an unsupported format (want {FORMAT}): {p}")
        try:
            entries = doc["keys"]
            active = doc["active"]
            pseudonym_b64 = doc["pseudonym_key"]
        except KeyError as exc:
            raise KeyringError(f"key file is malformed (missing {exc.args[0]!r}): {p}") from None
        if not isinstance(entries, list) or not entries:
            raise KeyringError(f"key file is malformed (no keys): {p}")
        keys = []
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise KeyringError(f"key file is malformed (key entry {n}): {p}")
            key_id = entry.get("id")
            bits = entry.get("bits")
            created = entry.get("created", "")
            if not isinstance(key_id, int) or not isinstance(bits, int):
                raise KeyringError(f"key file is malformed (key entry {n} id/bits): {p}")
            material = _b64(entry.get("material"), f"key {key_id} material", p)
            try:
                keys.append(Key(key_id, bits, material, str(created)))
            except KeyringError as exc:
                raise KeyringError(f"key file is malformed ({exc}): {p}") from None
        if not isinstance(active, int):
            raise KeyringError(f"key file is malformed (active): {p}")
        pseudonym_key = _b64(pseudonym_b64, "pseudonym_key", p)
        highest, generation = doc.get("highest_id", 0), doc.get("generation", 0)
        if not isinstance(highest, int) or not isinstance(generation, int):
            raise KeyringError(f"key file is malformed (highest_id/generation): {p}")
        try:
            return cls(keys, active, pseudonym_key, highest_id=highest, generation=generation)
        except KeyringError as exc:
            raise KeyringError(f"key file is malformed ({exc}): {p}") from None

    # -- queries ---------------------------------------------------------------------------

    @property
    def active(self) -> Key:
        """The key new objects are written under: the file's active key as of now (one `stat`
        of the followed file; reloaded if it changed). Raises KeyringError if a changed file
        cannot be read or is not a rotation of this keyring."""
        self.refresh()
        return self._keys[self._active_id]

    def get(self, key_id: int) -> Key:
        """Return key `key_id`. Raises KeyringError (naming the id only) if there is none."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise KeyringError(f"no key with id {key_id} in the keyring") from None

    def lookup(self, key_id: int) -> Key | None:
        """Key `key_id`, reloading the followed file once if it is unknown (another process
        may have rotated); None if it is still unknown."""
        key = self._keys.get(key_id)
        if key is None and self.refresh():
            key = self._keys.get(key_id)
        return key

    @property
    def path(self) -> Path | None:
        """The key file this keyring follows, or None (in memory only)."""
        return self._path

    def refresh(self, force: bool = False) -> bool:
        """Reload the followed key file if it changed (or, with `force`, at all); returns True
        if it was read again. Keys already known stay known.

        Raises KeyringError if the file is unreadable, malformed, or not a rotation of this
        keyring (another pseudonym key, or other material under a known key id).
        """
        if self._path is None:
            return False
        if not force and self._stamp == keyfile.stamp_of(self._path):
            return False
        with self._reloading:
            stamp = keyfile.stamp_of(self._path)
            if not force and stamp == self._stamp:
                return False  # another thread reloaded meanwhile
            raw, stamp = keyfile.read(self._path)
            self._merge(Keyring._from_document(raw, self._path))
            self._stamp = stamp
        return True

    def _merge(self, newer: Keyring) -> None:
        p = self._path
        if not hmac.compare_digest(newer._pseudonym_key, self._pseudonym_key):
            raise KeyringError(f"key file {p} now holds another pseudonym key; not reloaded")
        for key_id, key in newer._keys.items():
            known = self._keys.get(key_id)
            if known is not None and not hmac.compare_digest(known.material, key.material):
                raise KeyringError(f"key file {p} holds other material under key id {key_id}; "
                                   "not reloaded")
        before = self._active_id
        # Keys first, then the active id: a reader in between sees a superset of keys.
        self._keys = {**self._keys, **newer._keys}
        self._active_id = newer._active_id
        self._highest = max(self._highest, newer._highest)
        self._generation = newer._generation
        if self._active_id != before:
            log.info("key file reloaded: key %d is now active (keys %s)", self._active_id,
                     sorted(self._keys))

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def infos(self) -> list[KeyInfo]:
        """(id, bits, created, active) for every key, by id; no material."""
        return [
            KeyInfo(k.id, k.bits, k.created, k.id == self._active_id)
            for k in sorted(self._keys.values(), key=lambda k: k.id)
        ]

    def __repr__(self) -> str:
        return f"Keyring(keys={sorted(self._keys)}, active={self._active_id})"

    __str__ = __repr__

    # -- changes ---------------------------------------------------------------------------

    def add(self, bits: int | None = None, activate: bool = True) -> Key:
        """Add a new random key with an id never issued before (highest ever + 1; same size as
        the active key unless `bits`), make it active unless `activate=False`, and return it.
        Call `save` to keep it (or use `rotate`, which does both under the file's lock)."""
        new_id = self._highest + 1
        key = Key.generate(new_id, bits if bits is not None else self._keys[self._active_id].bits)
        self._keys = {**self._keys, new_id: key}
        self._highest = new_id
        if activate:
            self._active_id = new_id
        return key

    @classmethod
    def rotate(cls, path: str | os.PathLike[str], bits: int | None = None) -> tuple[Keyring, Key]:
        """Add a new active key to the key file at `path`, atomically with respect to every
        other process using the file: read, add and save happen under its lock, so two
        rotations at once give two different keys. Returns (the saved keyring, the new key).

        Raises KeyringError if the file cannot be read or written.
        """
        p = Path(path)
        with keyfile.locked(p):
            keyring = cls.load(p)
            key = keyring.add(bits=bits)
            keyring._save_locked(p)
        return keyring, key

    def activate(self, key_id: int) -> None:
        """Make key `key_id` the active one. Raises KeyringError if unknown."""
        self.get(key_id)
        self._active_id = key_id

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the keyring to `path` atomically with mode 0600, replacing the file there only
        if it is still the one this keyring read (compare-and-swap on its generation, under the
        file's lock).

        Raises KeyringError if it cannot be written, or if the file changed since it was read.
        """
        p = Path(path)
        if not p.exists():
            self._write(p, overwrite=False)
            self._path, self._stamp = p, keyfile.stamp_of(p)
            return
        with keyfile.locked(p):
            self._save_locked(p)

    def _save_locked(self, p: Path) -> None:
        raw, _ = keyfile.read(p)
        on_file = Keyring._from_document(raw, p)
        if on_file._generation != self._generation or any(
                k not in self._keys for k in on_file._keys):
            raise KeyringError(_CHANGED.format(p))
        self._highest = max(self._highest, on_file._highest)
        self._generation += 1
        try:
            self._write(p, overwrite=True)
        except KeyringError:
            self._generation -= 1
            raise
        self._path, self._stamp = p, keyfile.stamp_of(p)

    # -- pseudonyms ------------------------------------------------------------------------

    def pseudonym(self, *parts: str) -> str:
        """Keyed pseudonym of `parts`: HMAC-SHA256 under the pseudonym key, 24 hex chars.

        The parts are length-prefixed before hashing, so ("ab", "c") and ("a", "bc") differ.
        Stable across `add()`: the pseudonym key never rotates.
        """
        msg = bytearray()
        for part in parts:
            data = part.encode("utf-8")
            msg += len(data).to_bytes(8, "big")
            msg += data
        digest = hmac.new(self._pseudonym_key, bytes(msg), hashlib.sha256).hexdigest()
        return digest[:PSEUDONYM_HEX_CHARS]

    # -- file writing ----------------------------------------------------------------------

    def _document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "active": self._active_id,
            "keys": [
                {
                    "id": k.id,
                    "bits": k.bits,
                    "created": k.created,
                    "material": base64.b64encode(k.material).decode("ascii"),
                }
                for k in sorted(self._keys.values(), key=lambda k: k.id)
            ],
            "pseudonym_key": base64.b64encode(self._pseudonym_key).decode("ascii"),
            "generation": self._generation,
            "highest_id": self._highest,
        }

    def _write(self, path: Path, overwrite: bool) -> None:
        data = (json.dumps(self._document(), indent=2) + "\n").encode("utf-8")
        keyfile.write(path, data, overwrite)


def _b64(value: object, what: str, p: Path) -> bytes:
    if not isinstance(value, str):
        raise KeyringError(f"key file is malformed ({what} is not a base64 string): {p}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise KeyringError(f"key file is malformed ({what} is not valid base64): {p}") from None
