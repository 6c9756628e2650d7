"""Back-pressure: may the node take another instance now?

Two watermarks, from the settings:

- free space (``[store] min_free_bytes``): the filesystems of the home (the SQLite index,
  the spool) and of a local store must keep more free space than ``min_free_bytes``, or
  than 5% of their size when that is smaller (so a small disk is not refused from the
  start). An S3 store is not measured: its space is the object store's business.
- the processing queue (``[processing] max_queue``): at most that many jobs waiting.
- the spool (``[store] spool_max_bytes``): at most that many bytes waiting for upload in
  the home's local spool (node.store.spool), as when the object store is down.

Over either, the edges refuse for now (C-STORE 0xA700, STOW-RS 503 with Retry-After) and
log why, once per change of state; below them again, service resumes by itself. A reading
is cached for ``ttl`` seconds, so asking costs nothing per instance. ``state()`` is what
``/healthz`` and ``support-node status`` show.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("support_node.pressure")
SHARE = 0.05  # the watermark is at most this share of a filesystem's size


@dataclass(frozen=True)
class Reading:
    """One look: ``reason`` is None when new instances are welcome."""

    reason: str | None
    free_bytes: int | None  # least free space over the watched filesystems
    queue_depth: int | None
    spool_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict[str, object]:
        return {"accepting": self.ok, "reason": self.reason, "free_bytes": self.free_bytes,
                "queue_depth": self.queue_depth, "spool_bytes": self.spool_bytes}


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


class Pressure:
    """Watches ``paths``' filesystems and ``queue_depth()`` against the two watermarks."""

    def __init__(self, paths: Sequence[Path], min_free_bytes: int,
                 queue_depth: Callable[[], int] | None, max_queue: int,
                 ttl: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 spool_bytes: Callable[[], int] | None = None, spool_max: int = 0) -> None:
        self.paths = list(paths)
        self.spool_bytes = spool_bytes
        self.spool_max = spool_max
        self.min_free_bytes = min_free_bytes
        self.queue_depth = queue_depth
        self.max_queue = max_queue
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._last: Reading | None = None
        self._at = float("-inf")

    def state(self) -> Reading:
        """The cached reading, taken again when older than ``ttl``."""
        with self._lock:
            if self._last is not None and self.clock() - self._at < self.ttl:
                return self._last
            reading = self._read()
            if self._last is None or reading.ok != self._last.ok:
                if reading.ok:
                    if self._last is not None:
                        log.warning("accepting instances again")
                else:
                    log.warning("refusing new instances for now: %s", reading.reason)
            self._last, self._at = reading, self.clock()
            return reading

    def _read(self) -> Reading:
        reason = None
        least = None
        for path in self.paths if self.min_free_bytes else ():
            free, mark = self._space(path)
            if free is None:
                continue
            least = free if least is None else min(least, free)
            if reason is None and free < mark:
                reason = (f"{_gib(free)} free on the filesystem of {path}, below "
                          f"store.min_free_bytes ({_gib(mark)})")
        depth = None
        if self.queue_depth is not None and self.max_queue:
            try:
                depth = self.queue_depth()
            except Exception as exc:  # the index is down: ingest will say so itself
                log.debug("queue depth unknown: %s", type(exc).__name__)
            if reason is None and depth is not None and depth > self.max_queue:
                reason = (f"{depth} jobs wait for processing, over processing.max_queue "
                          f"({self.max_queue})")
        spooled = self.spool_bytes() if self.spool_bytes is not None else None
        if reason is None and spooled is not None and self.spool_max and \
                spooled > self.spool_max:
            reason = (f"{_gib(spooled)} wait in the spool for upload, over "
                      f"store.spool_max_bytes ({_gib(self.spool_max)}): is the store down?")
        return Reading(reason, least, depth, spooled)

    def _space(self, path: Path) -> tuple[int | None, int]:
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent  # a store folder not made yet: its parent's filesystem
        try:
            st = os.statvfs(probe)
        except OSError:
            return None, 0
        free = st.f_bavail * st.f_frsize
        size = st.f_blocks * st.f_frsize
        return free, min(self.min_free_bytes, int(size * SHARE))
