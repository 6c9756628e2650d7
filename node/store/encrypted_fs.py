"""An fsspec filesystem that stores every file as an encrypted object on another fsspec filesystem.

    efs = EncryptedFileSystem(LocalFileSystem(), keyring, root="/srv/store")
    efs.pipe_file("default/p1/1.2.3/original.dcm", data)      # encrypted under the active key
    efs.cat_file("default/p1/1.2.3/original.dcm")             # plaintext, authenticated

Paths are relative to `root` on the wrapped filesystem, as with fsspec's `DirFileSystem`. The
object format is `node.crypto.aead`; each object's associated data is its *relative* logical path
(normalised: no leading or trailing slash, no empty or "." parts, ".." refused). So a whole store
can move to another directory or bucket and still decrypt, while an object moved or copied to
another path inside it fails with IntegrityError.

Writes are atomic: readers see the old object or the new one, never a part.
- Local disk: the ciphertext streams into a temporary file in the target directory
  (`.<name>.<random>.snenc-tmp`, hidden from listings), optionally fsync'd, then `os.replace`;
  with `fsync=True` the directory is fsync'd too, so the rename survives a crash.
- Anything else: the ciphertext is buffered and written with one `pipe_file` (an S3 PUT, which is
  atomic). If a `with fs.open(p, "wb")` block raises, nothing is written.

Sizes. `ls`/`find`/`walk` report plaintext sizes computed from the stored size with *this*
filesystem's `chunk_size`, without reading anything; that is exact for objects written with the
same chunk size (everything this node writes under one configuration). An object whose stored
size is impossible for that chunk size has its header read instead. `info` (and so `size`) always
reads the 32-byte header and is exact. Open files report the exact `size`.

Errors are translated once: a missing object is FileNotFoundError(relative path); an object that
fails authentication is IntegrityError; other failures of the wrapped filesystem (OSError,
botocore errors) are StoreError, chained to the original.
"""

from __future__ import annotations

import enum
import errno
import io
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import stringify_path

from node.crypto.aead import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    DecryptingReader,
    Encryptor,
    ObjectHeader,
    decrypt,
    encrypt_to_buffer,
    parse_header,
    plaintext_size,
)
from node.crypto.keyring import Keyring
from node.errors import IntegrityError, StoreError
from node.index.object_versions import fingerprint
from node.layout import is_rewritten, is_spoolable
from node.store.sinks import TMP_SUFFIX, BufferSink, LocalSink, fsync_directory

__all__ = ["TMP_SUFFIX", "EncryptedFileSystem", "EncryptedWriter", "Reencrypted"]

#: Suffix of the hidden temporary files a local write goes through (swept by node.store.sweep).
_TMP_SUFFIX = TMP_SUFFIX


class Reencrypted(enum.Enum):
    """What `EncryptedFileSystem.reencrypt` did with one object."""

    REWRITTEN = "rewritten"  # it was under another key; now under the active key
    CURRENT = "current"  # already under the active key: nothing to do
    CHANGED = "changed"  # someone else replaced it meanwhile: left as they wrote it


def _store_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the wrapped store failed". botocore's are included only when it is
    already imported (it is whenever s3fs is in use), so local-only use never pays for it."""
    errors: list[type[BaseException]] = [OSError]
    boto = sys.modules.get("botocore.exceptions")
    if boto is not None:
        errors += [boto.BotoCoreError, boto.ClientError]
    return tuple(errors)


def _is_temp(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and base.endswith(_TMP_SUFFIX)


def _translate(exc: BaseException, rel: str, action: str) -> BaseException:
    """The exception to raise (from `exc`) for a failure of the wrapped store on `rel`:
    a missing object stays FileNotFoundError and, except on writes, a directory in the way stays
    Is/NotADirectoryError, both naming the relative path; anything else is StoreError."""
    if isinstance(exc, IntegrityError | StoreError):
        return exc
    if action != "write":
        if isinstance(exc, FileNotFoundError):
            return FileNotFoundError(errno.ENOENT, "no such object", rel)
        if isinstance(exc, IsADirectoryError | NotADirectoryError):
            return type(exc)(exc.errno, exc.strerror, rel)
    return StoreError(f"store {action} failed: {rel}")


class EncryptedFileSystem(AbstractFileSystem):
    """Encrypt-everything wrapper around another fsspec filesystem (see the module docstring).

    Not cached by fsspec (`cachable = False`): two instances with the same wrapped filesystem
    but different keyrings must never be confused.
    """

    protocol: ClassVar[str] = "encrypted"
    root_marker = ""
    cachable = False

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

    def __repr__(self) -> str:
        return (
            f"EncryptedFileSystem({type(self.fs).__name__}, root={self.root!r}, "
            f"chunk_size={self.chunk_size}, keyring={self.keyring!r})"
        )

    # -- listing -----------------------------------------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """Entries at `path` with plaintext sizes (see the module docstring on sizes).

        Raises FileNotFoundError if nothing is there (the root itself lists as empty).
        """
        rel = self._strip_protocol(path)
        try:
            entries = self.fs.ls(self._join(rel), detail=True, **kwargs)
        except _store_errors() as exc:
            if isinstance(exc, FileNotFoundError) and rel == "":
                return []
            raise _translate(exc, rel, "listing") from exc
        if not detail:
            names = (self._relpath(entry["name"]) for entry in entries)
            return [name for name in names if not _is_temp(name)]
        out: list[dict[str, Any]] = []
        for entry in entries:
            name = self._relpath(entry["name"])
            if _is_temp(name):
                continue
            info = dict(entry, name=name)
            if entry.get("type") == "file":
                info["stored_size"] = entry.get("size")
                info["size"] = self._listed_size(name, entry.get("size"))
            out.append(info)
        return out

    def _listed_size(self, rel: str, stored: int | None) -> int | None:
        if stored is None:
            return None
        size = plaintext_size(stored, self.chunk_size)
        if size is None:
            size = self._exact_size(rel, stored)
        return size

    def _exact_size(self, rel: str, stored: int) -> int | None:
        try:
            header = self._read_header(rel)
        except IntegrityError:
            return None
        return plaintext_size(stored, header.chunk_size)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """Details of `path`; a file's `size` is its exact plaintext size (reads its header),
        None if the object is corrupt. Raises FileNotFoundError."""
        rel = self._strip_protocol(path)
        if rel == "":
            return {"name": "", "size": 0, "type": "directory"}
        try:
            entry = self.fs.info(self._join(rel), **kwargs)
        except _store_errors() as exc:
            raise _translate(exc, rel, "lookup") from exc
        info = dict(entry, name=rel)
        if entry.get("type") == "file":
            stored = entry.get("size")
            info["stored_size"] = stored
            info["size"] = None if stored is None else self._exact_size(rel, stored)
        return info

    def exists(self, path: str, **kwargs: Any) -> bool:
        """Whether an object or directory is at `path`. Raises StoreError if the store cannot
        say (unlike fsspec's default, which would answer False)."""
        rel = self._strip_protocol(path)
        if rel == "":
            return True
        try:
            return bool(self.fs.exists(self._join(rel), **kwargs))
        except _store_errors() as exc:
            # "Cannot tell" must not read as "absent": callers decide to write on False.
            if isinstance(exc, FileNotFoundError):
                return False
            raise _translate(exc, rel, "lookup") from exc

    def isfile(self, path: str) -> bool:
        rel = self._strip_protocol(path)
        return rel != "" and bool(self.fs.isfile(self._join(rel)))

    def isdir(self, path: str) -> bool:
        rel = self._strip_protocol(path)
        return rel == "" or bool(self.fs.isdir(self._join(rel)))

    def modified(self, path: str) -> Any:
        return self.fs.modified(self._join(path))

    def created(self, path: str) -> Any:
        return self.fs.created(self._join(path))

    def ukey(self, path: str) -> str:
        return str(self.fs.ukey(self._join(path)))

    def invalidate_cache(self, path: str | None = None) -> None:
        self.fs.invalidate_cache(self._join(path) if path else (self.root or None))
        super().invalidate_cache(path)

    # -- directories -------------------------------------------------------------------------

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.fs.mkdir(self._join(path), create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.fs.makedirs(self._join(path), exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        self.fs.rmdir(self._join(path))

    # -- reading -----------------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> DecryptingReader | EncryptedWriter:
        """ "rb": a seekable plaintext reader; "wb"/"xb": an atomic writer (published on close).

        Extra keyword arguments go to the wrapped filesystem's `open` when reading (e.g.
        `cache_type="none"` for precise range reads on s3fs). Raises ValueError for other modes.
        """
        rel = self._strip_protocol(path)
        if rel == "":
            raise IsADirectoryError(errno.EISDIR, "is the root directory", "")
        if mode == "rb":
            reader: DecryptingReader = self._from_store_or_spool(
                rel, lambda: self._open_stored(rel, block_size, cache_options, **kwargs),
                lambda spooled: _StoreReader(spooled, self.keyring, rel))
            return reader
        if mode in ("wb", "xb"):
            if mode == "xb" and self.exists(rel):
                raise FileExistsError(errno.EEXIST, "object exists", rel)
            return EncryptedWriter(self, rel, autocommit=autocommit)
        raise ValueError(
            f"unsupported mode {mode!r}: encrypted objects are read ('rb') or written whole ('wb')"
        )

    def _open_stored(self, rel: str, block_size: int | None,
                     cache_options: dict[str, Any] | None, **kwargs: Any) -> DecryptingReader:
        if self._tracked(rel):
            self._check_current(rel, self._read_header(rel).raw)
        try:
            raw = self.fs.open(self._join(rel), "rb", block_size=block_size,
                               cache_options=cache_options, **kwargs)
        except _store_errors() as exc:
            raise _translate(exc, rel, "read") from exc
        try:
            return _StoreReader(raw, self.keyring, rel)
        except BaseException:
            raw.close()
            raise

    def open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        cache_options: dict[str, Any] | None = None,
        compression: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """As fsspec's `open`; in text write mode, an exception in the `with` block also
        discards the object instead of publishing what was written so far."""
        if "b" in mode:
            return super().open(path, mode, block_size, cache_options, compression, **kwargs)
        text_kwargs = {k: kwargs.pop(k) for k in ("encoding", "errors", "newline") if k in kwargs}
        binary = self.open(
            path,
            mode.replace("t", "") + "b",
            block_size=block_size,
            cache_options=cache_options,
            compression=compression,
            **kwargs,
        )
        return _TextFile(binary, **text_kwargs)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """Plaintext of `path`, or of [start, end) (negative: from the end). A whole-object read
        is one read of the wrapped store; a range decrypts only the chunks it covers.

        Raises FileNotFoundError, IntegrityError, StoreError.
        """
        rel = self._strip_protocol(path)
        if (start is None or start == 0) and end is None:
            def whole_spooled(spooled: Any) -> bytes:
                with spooled:
                    return decrypt(spooled.read(), self.keyring, rel)
            data: bytes = self._from_store_or_spool(
                rel, lambda: self._cat_stored(rel, **kwargs), whole_spooled)
            return data
        if self._tracked(rel):
            self._check_current(rel, self._read_header(rel).raw)
        return bytes(super().cat_file(rel, start=start, end=end, **kwargs))

    def _cat_stored(self, rel: str, **kwargs: Any) -> bytes:
        try:
            blob = self.fs.cat_file(self._join(rel), **kwargs)
            if not self._is_current(rel, blob[:HEADER_SIZE]):
                blob = self.fs.cat_file(self._join(rel), **kwargs)  # a write just now?
                self._check_current(rel, blob[:HEADER_SIZE])
        except _store_errors() as exc:
            raise _translate(exc, rel, "read") from exc
        return decrypt(blob, self.keyring, rel)

    # -- the local spool ---------------------------------------------------------------

    def _from_store_or_spool(self, rel: str, stored: Callable[[], Any],
                             spooled: Callable[[Any], Any]) -> Any:
        """``stored()``; when the store has no such object, ``spooled(file)`` on its
        ciphertext in the spool; when the spool has none either, ``stored()`` again (it was
        uploaded between the two looks) or its FileNotFoundError. The store comes first:
        most reads are of uploaded objects, which then cost no index lookup; an object that
        is never spooled (an output not made yet) is not looked for twice."""
        try:
            return stored()
        except FileNotFoundError:
            if self.spool is None or not is_spoolable(rel):
                raise
            found = self._spooled(rel)
            if found is None:
                return stored()
        return spooled(found)

    def _spooled(self, rel: str) -> Any:
        """The spooled ciphertext of ``rel`` (a seekable file), or None: read the store."""
        try:
            return self.spool.open(rel)
        except FileNotFoundError:
            raise
        except Exception as exc:  # the index failed: the store may still hold it
            raise StoreError(f"store read failed: {rel} (spool lookup)") from exc

    def seal(self, path: str, value: bytes | bytearray | memoryview) -> bytearray:
        """The ciphertext `pipe_file` would store at `path` (for the spool)."""
        return encrypt_to_buffer(value, self.keyring.active, self._strip_protocol(path),
                                 self.chunk_size)

    def put_sealed(self, path: str, blob: bytes | bytearray | memoryview) -> None:
        """Stores ciphertext made by `seal` at `path` (the uploader): as it is, or under
        the active key when the keys were rotated since it was sealed (a rotation's
        re-encryption pass cannot reach what was not in the store yet). Raises StoreError,
        IntegrityError."""
        rel = self._strip_protocol(path)
        active = self.keyring.active
        if parse_header(bytes(blob[:HEADER_SIZE]), rel).key_id != active.id:
            blob = encrypt_to_buffer(decrypt(blob, self.keyring, rel), active, rel,
                                     self.chunk_size)
        self._publish(rel, blob)

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
            if isinstance(exc, _store_errors()):
                raise _translate(exc, rel, "write") from exc
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

    def key_id(self, path: str) -> int:
        """Id of the key the object at `path` was written under (reads its header only)."""
        return self._read_header(self._strip_protocol(path)).key_id

    def _read_header(self, rel: str) -> ObjectHeader:
        try:
            head = self.fs.cat_file(self._join(rel), start=0, end=HEADER_SIZE)
        except _store_errors() as exc:
            raise _translate(exc, rel, "read") from exc
        return parse_header(head, rel)

    # -- writing -----------------------------------------------------------------------------

    def pipe_file(self, path: str, value: Any, mode: str = "overwrite",
                  record_version: bool = True, **kwargs: Any) -> None:
        """Encrypt `value` under the active key and store it at `path` atomically.

        mode="create" raises FileExistsError if the object exists (checked, not atomic).
        Raises StoreError if the store fails; then the old object, if any, is unchanged.
        A rewritten object's new version is recorded (``record_version``; see ``versions``).
        """
        rel = self._strip_protocol(path)
        if rel == "":
            raise IsADirectoryError(errno.EISDIR, "is the root directory", "")
        if mode == "create" and self.exists(rel):
            raise FileExistsError(errno.EEXIST, "object exists", rel)
        blob = encrypt_to_buffer(value, self.keyring.active, rel, self.chunk_size)
        if record_version and self.spool is not None and is_spoolable(rel):
            self.spool.forget(rel)  # the spooled older version must never be put over this
        self._publish(rel, blob)
        if record_version:
            self._record({rel: bytes(blob[:HEADER_SIZE])})

    def pipe_files(self, objects: dict[str, bytes], record_versions: bool = True) -> None:
        """Writes several objects, each atomically; on local disk with one directory fsync
        per folder instead of one per object (the ingest path writes two per instance).
        ``record_versions``: False for objects written for the first time (ingest), which
        have no older version to guard against.

        Raises StoreError; objects already renamed into place stay (each is whole).
        """
        if not self._local:  # pipe_file forgets a spooled older version itself
            for path, value in objects.items():
                self.pipe_file(path, value, record_version=record_versions)
            return
        if record_versions and self.spool is not None:
            for path in objects:
                if is_spoolable(rel := self._strip_protocol(path)):
                    self.spool.forget(rel)
        headers: dict[str, bytes] = {}
        sinks: list[tuple[str, LocalSink]] = []
        try:
            for path, value in objects.items():
                rel = self._strip_protocol(path)
                blob = encrypt_to_buffer(value, self.keyring.active, rel, self.chunk_size)
                headers[rel] = bytes(blob[:HEADER_SIZE])
                sink = LocalSink(self._join(rel), self.fsync, sync_directory=False)
                sinks.append((rel, sink))
                sink.write(blob)
                sink.finish()
            directories: set[str] = set()
            for _, sink in sinks:
                sink.commit()
                directories.update(sink.synced_directories)
            if self.fsync:
                for directory in directories:
                    fsync_directory(directory)
        except BaseException as exc:
            for _, sink in sinks:
                sink.discard()
            if isinstance(exc, _store_errors()):
                rel = sinks[-1][0] if sinks else ""
                raise _translate(exc, rel, "write") from exc
            raise
        if record_versions:
            self._record(headers)

    def _sink(self, rel: str) -> LocalSink | BufferSink:
        if self._local:
            return LocalSink(self._join(rel), self.fsync)
        return BufferSink(self.fs, self._join(rel))

    def rm_file(self, path: str) -> None:
        """Delete one object. Raises FileNotFoundError if there is none."""
        rel = self._strip_protocol(path)
        full = self._join(rel)
        try:
            # An S3 DELETE of a missing key succeeds; check, so every backend behaves alike.
            if not self._local and not self.fs.isfile(full):
                raise FileNotFoundError(errno.ENOENT, "no such object", rel)
            self.fs.rm_file(full)
        except _store_errors() as exc:
            raise _translate(exc, rel, "delete") from exc

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete objects (and with `recursive`, directories). Raises FileNotFoundError."""
        target = [self._join(p) for p in path] if isinstance(path, list) else self._join(path)
        try:
            self.fs.rm(target, recursive=recursive, maxdepth=maxdepth)
        except _store_errors() as exc:
            raise _translate(exc, str(path), "delete") from exc

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copy an object: decrypt, and re-encrypt under the active key bound to the new path.
        A directory is copied as an (empty) directory."""
        rel1, rel2 = self._strip_protocol(path1), self._strip_protocol(path2)
        if not self.fs.isfile(self._join(rel1)):
            if self.fs.isdir(self._join(rel1)):
                self.makedirs(rel2, exist_ok=True)
                return
            raise FileNotFoundError(errno.ENOENT, "no such object", rel1)
        with self.open(rel1, "rb") as src, self.open(rel2, "wb") as dst:
            shutil.copyfileobj(src, dst, length=self.chunk_size)

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
        except _store_errors() as exc:
            raise _translate(exc, rel, "read") from exc
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
        except _store_errors() as exc:
            raise _translate(exc, rel1, "move") from exc

    def _version(self, full: str) -> str | None:
        """The identity of the stored object at `full` (None if there is none), asked of the
        store itself: a listing cached by this process would not show another's write."""
        try:
            if not self._local:
                self.fs.invalidate_cache(full)
            return str(self.fs.ukey(full))
        except FileNotFoundError:
            return None
        except _store_errors() as exc:
            raise _translate(exc, full, "lookup") from exc


# -- file objects ---------------------------------------------------------------------------------


class _StoreReader(DecryptingReader):
    """DecryptingReader whose store errors become StoreError."""

    def _read_ciphertext(self, offset: int, length: int) -> bytes:
        try:
            return super()._read_ciphertext(offset, length)
        except IntegrityError:
            raise
        except _store_errors() as exc:
            raise _translate(exc, self.path, "read") from exc


class EncryptedWriter(io.BufferedIOBase):
    """Write-only file for one object. `close()` publishes it atomically; leaving a `with` block
    by an exception, `discard()`, or garbage collection without `close()` publishes nothing.

    With autocommit=False (fsspec transactions) `close()` only finishes it; `commit()`
    publishes and `discard()` drops it. Store failures raise StoreError.
    """

    def __init__(self, efs: EncryptedFileSystem, path: str, autocommit: bool = True) -> None:
        super().__init__()
        self.fs = efs
        self.path = path
        self.autocommit = autocommit
        self._encryptor = Encryptor(efs.keyring.active, path, efs.chunk_size)
        try:
            self._sink: LocalSink | BufferSink | None = efs._sink(path)
        except _store_errors() as exc:
            raise _translate(exc, path, "write") from exc

    @property
    def key_id(self) -> int:
        return self._encryptor.key_id

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._encryptor.plaintext_size

    def write(self, data: Any) -> int:
        """Take `data`; returns its length. Raises StoreError if the store fails (the object
        is then discarded)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._sink is None:
            raise StoreError(f"write already failed: {self.path}")
        size = memoryview(data).nbytes
        out = self._encryptor.update(data)
        if out:
            self._guarded(self._sink.write, out)
        return size

    def close(self) -> None:
        """Finish the object and (with autocommit) publish it. Raises StoreError."""
        if self.closed:
            return
        try:
            if self._sink is not None:
                sink = self._sink
                self._guarded(sink.write, self._encryptor.finalize())
                self._guarded(sink.finish)
                if self.autocommit:
                    self._guarded(sink.commit)
                    self._sink = None
        finally:
            super().close()

    def commit(self) -> None:
        """Publish a closed writer opened with autocommit=False."""
        if self.autocommit:
            raise RuntimeError("commit() is only for autocommit=False writers")
        if not self.closed:
            self.close()
        if self._sink is not None:
            sink, self._sink = self._sink, None
            try:
                sink.commit()
            except BaseException as exc:
                sink.discard()
                if isinstance(exc, _store_errors()):
                    raise _translate(exc, self.path, "write") from exc
                raise

    def discard(self) -> None:
        """Drop everything written; nothing is published."""
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.discard()
        if not self.closed:
            super().close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()

    def __del__(self) -> None:
        # Never publish from the garbage collector: an unclosed writer is an abandoned one.
        try:
            if not self.closed:
                self.discard()
        except Exception:
            pass

    def _guarded(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, _store_errors()):
                raise _translate(exc, self.path, "write") from exc
            raise

    def __repr__(self) -> str:
        return f"<EncryptedWriter path={self.path!r}>"


class _TextFile(io.TextIOWrapper):
    """Text wrapper that discards (rather than publishes) a writer left by an exception."""

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and isinstance(self.buffer, EncryptedWriter):
            self.buffer.discard()
            return
        super().__exit__(exc_type, exc, tb)
