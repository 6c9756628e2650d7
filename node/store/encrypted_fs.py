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

Modules: this one is the plaintext fsspec side; `node.store.stored_objects` (its base class) keeps
the ciphertext on the wrapped filesystem (paths, atomic publish, versions, key rotation);
`node.store.encrypted_files` has the file objects `open` returns; `node.store.failures` translates
the wrapped filesystem's errors.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from typing import Any, ClassVar

from node.crypto.aead import (
    HEADER_SIZE,
    decrypt,
    encrypt_to_buffer,
    parse_header,
    plaintext_size,
)
from node.crypto.reader import DecryptingReader
from node.errors import IntegrityError, StoreError
from node.layout import is_spoolable
from node.store.encrypted_files import EncryptedWriter, StoreReader, TextFile
from node.store.failures import store_errors, translate
from node.store.sinks import TMP_SUFFIX, LocalSink, fsync_directory
from node.store.stored_objects import Reencrypted, StoredObjects

__all__ = ["TMP_SUFFIX", "EncryptedFileSystem", "EncryptedWriter", "Reencrypted"]

#: Suffix of the hidden temporary files a local write goes through (swept by node.store.sweep).
_TMP_SUFFIX = TMP_SUFFIX


def _is_temp(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and base.endswith(_TMP_SUFFIX)


class EncryptedFileSystem(StoredObjects):
    """Encrypt-everything wrapper around another fsspec filesystem (see the module docstring).

    Not cached by fsspec (`cachable = False`): two instances with the same wrapped filesystem
    but different keyrings must never be confused.
    """

    protocol: ClassVar[str] = "encrypted"
    root_marker = ""
    cachable = False

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
        except store_errors() as exc:
            if isinstance(exc, FileNotFoundError) and rel == "":
                return []
            raise translate(exc, rel, "listing") from exc
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
        except store_errors() as exc:
            raise translate(exc, rel, "lookup") from exc
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
        except store_errors() as exc:
            # "Cannot tell" must not read as "absent": callers decide to write on False.
            if isinstance(exc, FileNotFoundError):
                return False
            raise translate(exc, rel, "lookup") from exc

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
                lambda spooled: StoreReader(spooled, self.keyring, rel))
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
        except store_errors() as exc:
            raise translate(exc, rel, "read") from exc
        try:
            return StoreReader(raw, self.keyring, rel)
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
        return TextFile(binary, **text_kwargs)

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
        except store_errors() as exc:
            raise translate(exc, rel, "read") from exc
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
            if isinstance(exc, store_errors()):
                rel = sinks[-1][0] if sinks else ""
                raise translate(exc, rel, "write") from exc
            raise
        if record_versions:
            self._record(headers)

    def rm_file(self, path: str) -> None:
        """Delete one object. Raises FileNotFoundError if there is none."""
        rel = self._strip_protocol(path)
        full = self._join(rel)
        try:
            # An S3 DELETE of a missing key succeeds; check, so every backend behaves alike.
            if not self._local and not self.fs.isfile(full):
                raise FileNotFoundError(errno.ENOENT, "no such object", rel)
            self.fs.rm_file(full)
        except store_errors() as exc:
            raise translate(exc, rel, "delete") from exc

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete objects (and with `recursive`, directories). Raises FileNotFoundError."""
        target = [self._join(p) for p in path] if isinstance(path, list) else self._join(path)
        try:
            self.fs.rm(target, recursive=recursive, maxdepth=maxdepth)
        except store_errors() as exc:
            raise translate(exc, str(path), "delete") from exc

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
