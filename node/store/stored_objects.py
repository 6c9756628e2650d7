"""The ciphertext side of `EncryptedFileSystem` (node.store.encrypted_fs, a subclass of
`StoredObjects`): where each object's bytes live on the wrapped filesystem, and how whole
objects are put there, checked and rewritten.

- Paths: the normalised relative path (each object's associated data) maps to `root/<path>`
  on the wrapped filesystem (`_join`), and a listed name back (`_relpath`).
- Writes publish a whole object or nothing (`_publish`, through node.store.sinks).
- Objects rewritten in place are compared with the index's record of their current version
  (`versions`, set by node.wiring), so an older copy put back is refused (IntegrityError).
- Key rotation rewrites one object under the active key, never over a newer write
  (`reencrypt`); quarantine moves stored bytes unchanged (`move_stored`).

The plaintext side (listing, open, cat, pipe, rm, the spool) is `EncryptedFileSystem`. Store
failures are translated once (node.store.failures).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import stringify_path

from node.crypto.aead import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    ObjectHeader,
    decrypt,
    encrypt_to_buffer,
    parse_header,
)
from node.crypto.keyring import Keyring
from node.errors import IntegrityError, StoreError
from node.index.object_versions import fingerprint
from node.layout import is_rewritten
from node.store.failures import store_errors, translate
from node.store.sinks import BufferSink, LocalSink

__all__ = ["Reencrypted", "StoredObjects"]


class Reencrypted(enum.Enum):
    """What `EncryptedFileSystem.reencrypt` did with one object."""

    REWRITTEN = "rewritten"  # it was under another key; now under the active key
    CURRENT = "current"  # already under the active key: nothing to do
    CHANGED = "changed"  # someone else replaced it meanwhile: left as they wrote it


class StoredObjects(AbstractFileSystem):
    """The ciphertext layer of `EncryptedFileSystem` (see the module docstring); not used on
    its own."""

    def __init__(
        self,
        fs: AbstractFileSystem,
        keyring: Keyring,
        root: str = "",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        fsync: bool = False,
        **storage_options: Any,
    ) -> None:
        """`fs`: the filesystem the objects live on; `root`: a path on it that relative paths
        start from; `chunk_size`: plaintext bytes per chunk for new objects; `fsync`: on local
        disk, fsync each object and its directory before a write returns."""
        super().__init__(**storage_options)
        self.fs = fs
        self.keyring = keyring
        self.chunk_size = chunk_size
        self.fsync = fsync
        # Set by the node (node.wiring): the index's record of current versions of objects
        # rewritten in place; reads of those compare, so an older copy put back is refused.
        self.versions: Any = None
        # Set by the node (node.wiring): the local spool's reader (node.store.spool). An
        # object acknowledged from the spool is read there until the uploader has put it.
        self.spool: Any = None
        self._local = isinstance(fs, LocalFileSystem)
        # A local root is always made absolute, so listings can be mapped back to relative paths.
        self.root: str = fs._strip_protocol(root) if (root or self._local) else ""
        if self.root not in ("", "/"):
            self.root = self.root.rstrip("/")

    # -- paths -------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        """The normalised relative path: no protocol, no leading/trailing or doubled slashes,
        no "." parts. Raises ValueError for ".." (it would escape the root, or alias a path)."""
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        for prefix in ("encrypted://", "encrypted::"):
            if path.startswith(prefix):
                path = path[len(prefix) :]
        parts = [p for p in path.split("/") if p and p != "."]
        if ".." in parts:
            raise ValueError(f"path must not contain '..': {path!r}")
        return "/".join(parts)

    def _join(self, rel: str) -> str:
        rel = self._strip_protocol(rel)
        if not self.root:
            return rel
        if not rel:
            return self.root
        return f"{self.root.rstrip('/')}/{rel}"

    def _relpath(self, full: str) -> str:
        # Wrapped filesystems disagree on a leading "/" (memory strips it, local keeps it).
        name = full.rstrip("/").lstrip("/")
        root = self.root.strip("/")
        if not root:
            return name
        if name == root:
            return ""
        if name.startswith(root + "/"):
            return name[len(root) + 1 :]
        raise StoreError(f"wrapped filesystem listed a path outside the root: {full}")

    # -- headers -----------------------------------------------------------------------------

    def key_id(self, path: str) -> int:
        """Id of the key the object at `path` was written under (reads its header only)."""
        return self._read_header(self._strip_protocol(path)).key_id

    def _read_header(self, rel: str) -> ObjectHeader:
        try:
            head = self.fs.cat_file(self._join(rel), start=0, end=HEADER_SIZE)
        except store_errors() as exc:
            raise translate(exc, rel, "read") from exc
        return parse_header(head, rel)

    # -- publishing --------------------------------------------------------------------------

    def _sink(self, rel: str) -> LocalSink | BufferSink:
        if self._local:
            return LocalSink(self._join(rel), self.fsync)
        return BufferSink(self.fs, self._join(rel))

    def _publish(self, rel: str, blob: bytes | bytearray | memoryview,
                 still: Callable[[], bool] | None = None) -> bool:
        """Writes `blob` at `rel` atomically; the old object, if any, stays on failure.
        `still`: asked once the bytes are ready, just before they are put in place; False
        discards them and returns False (the object changed meanwhile)."""
        sink = None
        try:
            sink = self._sink(rel)
            sink.write(blob)
            sink.finish()
            if still is not None and not still():
                sink.discard()
                return False
            sink.commit()
            return True
        except BaseException as exc:
            if sink is not None:
                sink.discard()
            if isinstance(exc, store_errors()):
                raise translate(exc, rel, "write") from exc
            raise

    # -- versions of rewritten objects ---------------------------------------------------

    def _tracked(self, rel: str) -> bool:
        return self.versions is not None and is_rewritten(rel)

    def _is_current(self, rel: str, header: bytes) -> bool:
        if not self._tracked(rel):
            return True
        expected = self.versions.current(rel)
        return expected is None or expected == fingerprint(header)

    def _check_current(self, rel: str, header: bytes) -> None:
        """Raises IntegrityError when ``header`` is not of the current version of ``rel``
        (checked twice, a moment apart: a writer records its version just after its
        object becomes visible)."""
        if self._is_current(rel, header):
            return
        time.sleep(0.1)
        if not self._is_current(rel, header) and not self._is_current(
                rel, self._read_header(rel).raw):
            raise IntegrityError(f"{rel}: not the current version of this object (an older "
                                 "copy put back in its place?)")

    def _record(self, headers: dict[str, bytes]) -> None:
        tracked = {rel: h for rel, h in headers.items() if self._tracked(rel)}
        if tracked:
            self.versions.record(tracked)

    # -- key rotation and quarantine ---------------------------------------------------------

    def reencrypt(self, path: str) -> Reencrypted:
        """Rewrite the object at `path` under the keyring's active key (key rotation), safely
        beside other writers: if the object is replaced while this runs (a worker rewrote a
        description), the newer object is kept and CHANGED returned; a later pass checks it
        again. The check compares the object's identity (`ukey`: inode and mtime on local
        disk, the ETag on S3) just before the rename or PUT, so only a write landing in that
        last instant could still be overwritten by the same plaintext it replaced.

        Raises FileNotFoundError, IntegrityError, StoreError.
        """
        rel = self._strip_protocol(path)
        full = self._join(rel)
        active = self.keyring.active
        if self._read_header(rel).key_id == active.id:
            return Reencrypted.CURRENT
        before = self._version(full)
        try:
            blob = self.fs.cat_file(full)
        except store_errors() as exc:
            raise translate(exc, rel, "read") from exc
        if before is None or self._version(full) != before:
            return Reencrypted.CHANGED
        if self._tracked(rel):  # never give an older copy put back a fresh header
            self._check_current(rel, blob[:HEADER_SIZE])
        new = encrypt_to_buffer(decrypt(blob, self.keyring, rel), active, rel, self.chunk_size)
        if not self._publish(rel, new, still=lambda: self._version(full) == before):
            return Reencrypted.CHANGED
        if self._tracked(rel):
            # What the store holds now is current: this rewrite (same plaintext), or a newer
            # write of the node or of another rotation that landed meanwhile. Recording what
            # was written here instead could name a version the store no longer holds.
            self._record({rel: self._read_header(rel).raw})
        return Reencrypted.REWRITTEN

    def move_stored(self, path1: str, path2: str) -> None:
        """Move the stored bytes of the object at `path1` to `path2` unchanged (quarantine).

        The object stays bound to `path1`: read at `path2` it fails authentication; decrypt its
        bytes with `path1` (the caller keeps `path1` derivable from `path2`). Raises
        FileNotFoundError, StoreError.
        """
        rel1, rel2 = self._strip_protocol(path1), self._strip_protocol(path2)
        try:
            self.fs.mv(self._join(rel1), self._join(rel2))
        except store_errors() as exc:
            raise translate(exc, rel1, "move") from exc

    def _version(self, full: str) -> str | None:
        """The identity of the stored object at `full` (None if there is none), asked of the
        store itself: a listing cached by this process would not show another's write."""
        try:
            if not self._local:
                self.fs.invalidate_cache(full)
            return str(self.fs.ukey(full))
        except FileNotFoundError:
            return None
        except store_errors() as exc:
            raise translate(exc, full, "lookup") from exc
