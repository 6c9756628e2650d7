"""The uploader: moves what waits in this node's spool into the object store.

One uploader runs per node (in ``serve``'s first process). It takes the oldest spooled
objects from the index, puts each instance's objects into the store in parallel
(``[store] upload_threads`` PUTs at once; s3fs sends large objects in parts), then deletes
their rows in one transaction and, from time to time, the segments nothing points into.

Restart-safe: an object is put before its row goes, so a kill at any moment leaves the row,
and the next start puts the same bytes at the same path again (no duplicate, nothing lost).
A store that fails is retried with a growing pause; the spool keeps taking instances
meanwhile, until its watermark (node.pressure).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from node.errors import CatalogError, StoreError
from node.index.spooled import Spooled
from node.layout import ORIGINAL
from node.store.spool import SpoolReader, folder_of

log = logging.getLogger("support_node.uploader")
BATCH = 64  # rows taken per round
COLLECT_EVERY = 5.0  # seconds between looks for deletable segments when idle
MISSING_RETRY = 60.0  # seconds before segments found missing are looked for again


@dataclass
class Progress:
    uploaded: int = 0  # objects put this run
    failures: int = 0  # rounds that failed


class Uploader:
    """Background uploads of one spool (see the module docstring)."""

    def __init__(self, fs: object, spool: SpoolReader, threads: int = 8,
                 idle_wait: float = 0.2) -> None:
        self.fs = fs
        self.spool = spool
        self.threads = max(1, threads)
        self.idle_wait = idle_wait
        self.progress = Progress()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._missing: set[str] = set()
        self._missing_since = 0.0

    def start(self) -> Uploader:
        self._thread = threading.Thread(target=self.run, name="uploader", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stops after the round in progress (what it has not put stays spooled)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        pause = 0.0
        last_collect = 0.0
        with ThreadPoolExecutor(self.threads, thread_name_prefix="upload") as pool:
            while not self._stop.is_set():
                try:
                    moved = self.round(pool)
                    pause = 0.0
                except (StoreError, CatalogError, OSError) as exc:
                    self.progress.failures += 1
                    pause = min(max(pause * 2, 0.5), 10.0)
                    log.warning("upload from the spool failed (%s); retrying in %.1f s",
                                exc, pause)
                    self._stop.wait(pause)
                    continue
                if moved:
                    continue
                now = time.monotonic()
                if now - last_collect >= COLLECT_EVERY:
                    last_collect = now
                    self._collect()
                self._wake.wait(self.idle_wait)
                self._wake.clear()
        self._collect()

    def round(self, pool: ThreadPoolExecutor | None = None) -> int:
        """Uploads up to BATCH waiting objects; returns how many were put. Raises
        StoreError, CatalogError, OSError (what was put stays put; rows stay for the
        rest)."""
        if time.monotonic() - self._missing_since > MISSING_RETRY:
            self._missing.clear()
        rows = self.spool.rows.waiting(self.spool.id, BATCH, self._missing)
        if not all(map(self._here, {r.segment for r in rows})):  # look again past them
            rows = [r for r in self.spool.rows.waiting(self.spool.id, BATCH, self._missing)
                    if self._here(r.segment)]
        if not rows:
            return 0
        by_folder: dict[str, list[Spooled]] = defaultdict(list)
        for row in rows:
            by_folder[folder_of(row.path)].append(row)
        groups = list(by_folder.items())
        if pool is None or len(groups) == 1:
            done = [e for folder, entries in groups for e in self._upload(folder, entries)]
        else:
            done = [e for put in pool.map(lambda g: self._upload(*g), groups) for e in put]
        self.spool.rows.done(done)
        self.progress.uploaded += len(done)
        return len(done) or len(rows)  # rows forgotten meanwhile still count as progress

    def _here(self, segment: str) -> bool:
        """Whether ``segment`` is in this home's spool. One that the index names but this
        spool lacks is another node's (a home copied with its spool id): left alone for a
        while, so that it never holds up this spool's own uploads."""
        if (self.spool.directory / segment).exists():
            return True
        if segment not in self._missing:
            log.warning("spool segment %s is named by the index but not in this node's spool "
                        "(another node started from a copy of this home?); its objects are "
                        "left for that node", segment)
            self._missing.add(segment)
            self._missing_since = time.monotonic()
        return False

    def _upload(self, folder: str, entries: list[Spooled]) -> list[Spooled]:
        """Puts one folder's waiting objects, holding the folder's lock so that a rewrite
        of one of them (node.store.spool.SpoolReader.forget) lands after this PUT."""
        with self.spool.locks.hold(folder):
            entries = self.spool.rows.still_there(entries)
            # The original first: a description in the store never points at a missing one.
            for entry in sorted(entries, key=lambda e: not e.path.endswith(ORIGINAL)):
                self.fs.put_sealed(entry.path, self.spool.read(entry))  # type: ignore[attr-defined]
        return entries

    def _collect(self) -> None:
        try:
            removed = self.spool.collect()
        except (CatalogError, OSError) as exc:
            log.warning("could not clean the spool: %s", exc)
            return
        if removed:
            log.debug("deleted %d uploaded spool segments", removed)
