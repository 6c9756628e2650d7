"""The keyring: numbered AES keys (one active) and the pseudonym key, kept in one 0600 JSON file.

File format (JSON, one object)::

    {"format": 1,
     "active": 2,
     "keys": [{"id": 1, "bits": 128, "created": "2025-01-01T00:00:00+00:00",
               "material": "<base64>"}, ...],
     "pseudonym_key": "<base64 of 32 bytes>"}

- New objects are written under the active key; old keys stay so old objects still decrypt.
  Rotation = `add()` (the new key becomes active) + `save()`; re-encryption is the store's job.
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
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from node.errors import KeyringError

__all__ = ["FORMAT", "PSEUDONYM_HEX_CHARS", "Key", "KeyInfo", "Keyring"]

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
_EXISTS = "key file already exists, not overwritten: {}"


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

    def __init__(self, keys: Iterable[Key], active_id: int, pseudonym_key: bytes) -> None:
        """Raises KeyringError if the ids repeat, `active_id` is not among them, there are no
        keys, or the pseudonym key is not 32 bytes."""
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
        keyring._write(Path(path), overwrite=False)
        return keyring

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read the key file at `path`.

        Raises KeyringError if it is missing, unreadable, accessible by group or others
        (fix: chmod 600), or malformed. Messages name the file, never its contents.
        """
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise KeyringError(f"key file not found: {p}") from None
        except OSError as exc:
            raise KeyringError(f"key file not readable: {p} ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise KeyringError(f"key file is not a regular file: {p}")
        if os.name == "posix" and st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise KeyringError(
                f"key file {p} is accessible by group or others (mode {mode:04o}); "
                f"restrict it with: chmod 600 {p}"
            )
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise KeyringError(f"key file not readable: {p} ({exc.strerror})") from None
        return cls._from_document(raw, p)

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
        try:
            return cls(keys, active, pseudonym_key)
        except KeyringError as exc:
            raise KeyringError(f"key file is malformed ({exc}): {p}") from None

    # -- queries ---------------------------------------------------------------------------

    @property
    def active(self) -> Key:
        """The key new objects are written under."""
        return self._keys[self._active_id]

    def get(self, key_id: int) -> Key:
        """Return key `key_id`. Raises KeyringError (naming the id only) if there is none."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise KeyringError(f"no key with id {key_id} in the keyring") from None

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
        """Add a new random key with id max+1 (same size as the active key unless `bits`),
        make it active unless `activate=False`, and return it. Call `save` to keep it."""
        new_id = max(self._keys) + 1
        key = Key.generate(new_id, bits if bits is not None else self.active.bits)
        self._keys[new_id] = key
        if activate:
            self._active_id = new_id
        return key

    def activate(self, key_id: int) -> None:
        """Make key `key_id` the active one. Raises KeyringError if unknown."""
        self.get(key_id)
        self._active_id = key_id

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the keyring to `path` atomically with mode 0600, replacing any file there.

        Raises KeyringError if it cannot be written.
        """
        self._write(Path(path), overwrite=True)

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
        }

    def _write(self, path: Path, overwrite: bool) -> None:
        data = (json.dumps(self._document(), indent=2) + "\n").encode("utf-8")
        directory = path.parent
        tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            # Created 0600 from the start: the material is never on disk with wider rights.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise KeyringError(f"cannot write key file: {path} ({exc.strerror})") from None
        try:
            with os.fdopen(fd, "wb") as fh:  # owns (and closes) fd from here on
                os.fchmod(fh.fileno(), 0o600)  # a restrictive umask may have dropped bits
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                # link() fails if `path` exists: an atomic "create, never overwrite".
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise KeyringError(_EXISTS.format(path)) from None
                except OSError:
                    # Filesystems without hard links: check, then rename (small race, noted).
                    if path.exists():
                        raise KeyringError(_EXISTS.format(path)) from None
                    os.replace(tmp, path)
            _fsync_dir(directory)
        except KeyringError:
            raise
        except OSError as exc:
            raise KeyringError(f"cannot write key file: {path} ({exc.strerror})") from None
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _b64(value: object, what: str, p: Path) -> bytes:
    if not isinstance(value, str):
        raise KeyringError(f"key file is malformed ({what} is not a base64 string): {p}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise KeyringError(f"key file is malformed ({what} is not valid base64): {p}") from None


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
