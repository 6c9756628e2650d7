"""The local spool: where a received instance becomes durable before the object store has it.

With ``[store] ack = "spool"`` (the default of ``serve``) ingest encrypts an instance's
objects exactly as the store would hold them, appends the ciphertext to a segment file of
this spool, makes it durable with one ``fdatasync`` (threads appending at the same time share
one: group commit), indexes the instance together with rows saying where its objects lie
(node.index.spooled), and only then acknowledges. The uploader (node.store.uploader) puts the
objects in the store later, off the acknowledgement path, and deletes the rows; reads find
an object through its row until then. Only ciphertext is ever written here.

A segment is written by one process (``<pid>-<random>-<n>.seg``) and held under an
exclusive ``flock`` while that process may still index something in it; a segment that no
row points into and no process holds is deleted by the uploader. Bytes appended but never
indexed (the process died before its index write: the sender was not acknowledged) are
garbage and go with their segment.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from node.index.spooled import Spooled, SpooledRows
from node.store.sinks import fsync_directory
from node.uid_lock import UidLocks

log = logging.getLogger("support_node.spool")
SPOOL = "spool"  # the folder under the home
SUFFIX = ".seg"
ID_FILE = "id"
SEGMENT_BYTES = 64 << 20  # a new segment once the current one holds this much
STALLED_S = 60.0  # after a wait for another spool's upload ran out, its reads fail at once
IDLE_SEAL_S = 30.0  # a segment with no append for this long is let go (deleted once uploaded)


def spool_id(directory: Path) -> str:
    """This spool's id (made on first use, kept in the folder): rows of the index name it,
    so that nodes sharing one index each upload their own spool's objects."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    new = secrets.token_hex(8)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of the node made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(new + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    fsync_directory(str(directory))
    return new


@dataclass
class _Segment:
    name: str
    fd: int
    written: int = 0
    synced: int = 0
    pending: int = 0  # appends not yet indexed (or given up)
    sealed: bool = False
    sync_lock: threading.Lock = field(default_factory=threading.Lock)


class SpoolWriter:
    """Appends ciphertext to this process's segment, durably (see the module docstring).

    A segment is let go once full, and also after ``idle_seal_s`` without an append (a
    thread started with the first append looks), so that the uploader can delete it once
    uploaded: the ciphertext of an instance deleted since does not stay on disk until a
    quiet receiver's segment fills, and the spool's size counts only what waits.
    """

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES,
                 idle_seal_s: float = IDLE_SEAL_S) -> None:
        self.directory = directory
        self.id = spool_id(directory)
        self.segment_bytes = segment_bytes
        self.idle_seal_s = idle_seal_s
        self._lock = threading.Lock()
        self._segments: dict[str, _Segment] = {}
        self._current: _Segment | None = None
        self._prefix = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._count = 0
        self._last_append = 0.0
        self._closed = threading.Event()
        self._sealer: threading.Thread | None = None

    @contextmanager
    def spooled(self, objects: Mapping[str, bytes | bytearray | memoryview]
                ) -> Iterator[list[Spooled]]:
        """Appends ``objects`` (path: ciphertext) and returns, once durable, where each
        lies; the segment stays held until the block ends (index them inside it).
        Raises OSError (nothing was acknowledged; the bytes are garbage)."""
        seg, entries = self._append(objects)
        try:
            self._sync(seg, entries[-1].position + entries[-1].length if entries else 0)
            yield entries
        finally:
            self._release(seg)

    def _append(self, objects: Mapping[str, bytes | bytearray | memoryview]
                ) -> tuple[_Segment, list[Spooled]]:
        with self._lock:
            seg = self._segment()
            self._last_append = time.monotonic()
            if self._sealer is None:
                self._sealer = threading.Thread(target=self._seal_when_idle, daemon=True,
                                                name="spool-sealer")
                self._sealer.start()
            entries = []
            seg.pending += 1
            try:
                for path, blob in objects.items():
                    view = memoryview(blob).cast("B")
                    position = seg.written
                    while view:
                        n = os.pwrite(seg.fd, view, seg.written)
                        seg.written += n
                        view = view[n:]
                    entries.append(Spooled(path, self.id, seg.name, position,
                                           seg.written - position))
            except BaseException:
                seg.pending -= 1
                raise
            return seg, entries

    def _segment(self) -> _Segment:
        seg = self._current
        if seg is not None and seg.written < self.segment_bytes:
            return seg
        if seg is not None:
            self._let_go(seg)
        self._count += 1
        name = f"{self._prefix}-{self._count:06d}{SUFFIX}"
        fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while this process may index into it
        fsync_directory(str(self.directory))
        seg = self._current = self._segments[name] = _Segment(name, fd)
        return seg

    def _sync(self, seg: _Segment, end: int) -> None:
        with seg.sync_lock:  # the first waiter syncs for every append before it
            if seg.synced >= end:
                return
            target = seg.written
            os.fdatasync(seg.fd)
            seg.synced = target

    def _seal_when_idle(self) -> None:
        """Lets the current segment go once no append came for ``idle_seal_s``."""
        while not self._closed.wait(max(0.05, self.idle_seal_s / 4)):
            with self._lock:
                seg = self._current
                if seg is not None and time.monotonic() - self._last_append >= self.idle_seal_s:
                    self._let_go(seg)

    def _release(self, seg: _Segment) -> None:
        with self._lock:
            seg.pending -= 1
            self._close_if_done(seg)

    def _let_go(self, seg: _Segment) -> None:
        """No more appends to ``seg``; closed now, or once its last index write is done.
        Called under ``_lock``."""
        seg.sealed = True
        if self._current is seg:
            self._current = None
        self._close_if_done(seg)

    def _close_if_done(self, seg: _Segment) -> None:
        if seg.sealed and seg.pending == 0 and seg.name in self._segments:
            del self._segments[seg.name]
            os.close(seg.fd)  # drops the flock: the uploader may delete it once uploaded

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for seg in list(self._segments.values()):  # the current one among them
                self._let_go(seg)


class SpoolReader:
    """Finds spooled objects through the index and opens their ciphertext.

    ``wait``: seconds a read of an object that waits in another node's spool (nodes sharing
    one index) gives that node's uploader before it fails with NotUploadedError. After one
    such wait runs out, reads of that spool's objects fail at once for ``STALLED_S``: a node
    that is down would otherwise make a retrieve of many instances wait for each.
    """

    def __init__(self, directory: Path, rows: SpooledRows, locks: UidLocks,
                 wait: float = 0.0) -> None:
        self.directory = directory
        self.id = spool_id(directory)
        self.rows = rows
        self.locks = locks
        self.wait = wait
        self._stalled: dict[str, float] = {}  # spool id -> until when its reads fail at once

    def forget(self, path: str) -> None:
        """Before ``path`` is rewritten in the store: its spooled (older) version is never
        to be uploaded. Waits for an upload of its folder in progress (the uploader holds
        the folder's lock from its check to its PUT), so the newer write lands last."""
        if self.rows.locate(path) is None:
            return
        with self.locks.hold(folder_of(path)):
            self.rows.forget(path)

    def locate(self, path: str) -> Spooled | None:
        return self.rows.locate(path)

    def open(self, path: str) -> _SegmentSlice | None:
        """The ciphertext of ``path`` while it waits in this spool; None when it is not
        spooled (or was uploaded just now: read the store). Raises NotUploadedError when
        it waits in another node's spool."""
        entry = self.rows.locate(path)
        if entry is None:
            return None
        if entry.spool != self.id:
            self._wait_for_upload(path, entry.spool)
            return None  # uploaded meanwhile: in the store now
        try:
            fd = os.open(self.directory / entry.segment, os.O_RDONLY)
        except FileNotFoundError:
            return None  # uploaded and its segment deleted since the lookup
        return _SegmentSlice(fd, entry.position, entry.length)

    def _wait_for_upload(self, path: str, spool: str) -> None:
        """Returns once ``path``, waiting in ``spool`` (another node's), has been uploaded
        (its row is gone); raises NotUploadedError after ``wait`` seconds, or at once while
        that spool is stalled. Raises CatalogError."""
        now = time.monotonic()
        if self.wait <= 0 or self._stalled.get(spool, 0.0) > now:
            raise NotUploadedError(path)
        deadline, pause = now + self.wait, 0.02
        while True:
            time.sleep(pause)
            pause = min(2 * pause, 0.5)
            entry = self.rows.locate(path)
            if entry is None:
                self._stalled.pop(spool, None)
                return
            if time.monotonic() >= deadline:
                self._stalled[spool] = time.monotonic() + STALLED_S
                log.warning("an object waiting in spool %s (another node's) was not uploaded "
                            "in %g s: reads of that spool's objects fail at once for %g s",
                            spool, self.wait, STALLED_S)
                raise NotUploadedError(path)

    def read(self, entry: Spooled) -> bytes:
        """The whole ciphertext of ``entry``. Raises OSError."""
        fd = os.open(self.directory / entry.segment, os.O_RDONLY)
        try:
            data = os.pread(fd, entry.length, entry.position)
        finally:
            os.close(fd)
        if len(data) != entry.length:
            raise OSError(f"spool segment {entry.segment} is shorter than its index says")
        return data

    def segments(self) -> list[str]:
        return sorted(p.name for p in self.directory.glob(f"*{SUFFIX}"))

    def size(self) -> int:
        """Bytes the spool's segments take on disk."""
        total = 0
        for name in self.segments():
            try:
                total += (self.directory / name).stat().st_size
            except FileNotFoundError:
                pass
        return total

    def collect(self) -> int:
        """Deletes the segments that no row points into and no process holds; returns
        how many."""
        removed = 0
        for name in self.segments():
            if self.rows.in_segment(self.id, name):
                continue
            path = self.directory / name
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a writer may still index into it
            try:
                if not self.rows.in_segment(self.id, name):  # indexed just before the lock?
                    path.unlink()
                    removed += 1
            finally:
                os.close(fd)
        return removed


def folder_of(path: str) -> str:
    """The lock key of an object: its instance folder."""
    return path.rsplit("/", 1)[0]


class NotUploadedError(FileNotFoundError):
    """The object waits in another node's spool: not in the store yet."""

    def __init__(self, path: str) -> None:
        super().__init__(2, "held in another node's spool, not uploaded yet", path)


class _SegmentSlice(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes at ``base`` of an open segment."""

    def __init__(self, fd: int, base: int, length: int) -> None:
        self._fd = fd
        self._base = base
        self.size = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, start + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        left = self.size - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._base + self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
