"""The processing worker: takes jobs from the index and derives each instance's outputs.

Runs in ``serve``'s processing pool, or as ``support-node worker``; any number of them, on
any number of hosts sharing the index and store. Every result is recorded in the index in
the transaction that deletes the job, so a worker killed at any moment leaves each accepted
instance either processed or still queued (see node.index.jobs).
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime

from node.core import Core
from node.errors import NodeError
from node.index.jobs import PROCESS, Job, JobQueue
from node.index.records import InstanceRecord, State
from node.index.series_watch import (
    PRETRAIN,
    SEGMENT,
    complete_series,
    pretrain_due,
    segment_params,
)
from node.processing.derive import derive, derive_labels
from node.processing.shared_filter import SharedFilter
from node.store.spool import NotUploadedError
from pipelines.dicom_seg import SEG_STORAGE
from pipelines.recipe import Recipe

log = logging.getLogger("support_node.processing")
KINDS = (PROCESS, SEGMENT, PRETRAIN)
# What a processed instance became, said once ("processed X", not "processed X: processed").
_DONE = {State.PROCESSED: "processed %s", State.NOT_IMAGE: "described %s (not an image)",
         State.UNDECODABLE: "%s is undecodable (kept, not processed)",
         State.LABELS: "read DICOM SEG %s as labels"}
AI_KINDS = (SEGMENT, PRETRAIN)  # minutes each: kept apart from processing in `serve`


class Worker:
    """Takes jobs and processes them, one at a time, with the node's shared filter."""

    def __init__(self, services: Core, name: str | None = None,
                 watch_every: float = 5.0, kinds: tuple[str, ...] = KINDS) -> None:
        self.core = services
        self.settings = services.settings.processing
        self.segment = services.settings.segment
        self.default = services.settings.recipe()
        self.queue = JobQueue(services.catalog, name)
        self.filter = SharedFilter(services.fs, services.catalog, self.settings)
        self.watch_every = watch_every
        self.kinds = kinds
        self._watched = 0.0

    def watch_series(self) -> list[str]:
        """Marks complete series (queueing their segmentation with ``segment.model``), at
        most every ``watch_every`` seconds. Returns the series newly complete."""
        now = time.monotonic()
        if now - self._watched < self.watch_every:
            return []
        self._watched = now
        now_utc = datetime.now(UTC)
        done = complete_series(self.core.catalog, now_utc,
                               self.segment.quiet_seconds, self.segment.model or None)
        pre = self.core.settings.pretrain
        if pretrain_due(self.core.catalog, pre.every, json.dumps(asdict(pre)), now_utc):
            log.info("%d new images since the last pretraining: queued one", pre.every)
        if done and self.segment.model:
            log.info("%d series complete; segmenting with %s", len(done), self.segment.model)
        elif done:  # nothing follows from it: not news at every start
            log.debug("%d series complete", len(done))
        return done

    def run(self, stop: threading.Event) -> None:
        """Works until ``stop`` is set, polling when the queue is empty."""
        released = self.queue.release_dead()
        if released:
            log.info("took back %d jobs from stopped workers", released)
        log.info("processing worker %s ready", self.queue.worker)
        while not stop.is_set():
            try:
                self.watch_series()
                if self.step():
                    continue
                self.filter.save()
            except NodeError as exc:  # the index is down: wait, then try again
                log.error("processing paused: %s", exc)
                stop.wait(5.0)
            stop.wait(self.settings.poll_ms / 1000.0)
        self.filter.save()

    def drain(self, on_job: Callable[[str], None] | None = None) -> Counter[str]:
        """Works until no job is due (``worker --once``). Returns outcomes counted by
        state ('retry' for jobs given back to try later). Raises CatalogError."""
        self.queue.release_dead()
        counts: Counter[str] = Counter()
        try:
            while True:
                jobs = self.queue.take(self.settings.batch, self.settings.lease_seconds,
                                       self.settings.max_attempts, self.kinds)
                if not jobs:
                    return counts
                for job in jobs:
                    outcome = self.process(job)
                    counts[outcome] += 1
                    if on_job:
                        on_job(outcome)
        finally:
            self.filter.save()

    def step(self) -> int:
        """Takes one batch of due jobs and processes them; returns how many there were."""
        jobs = self.queue.take(self.settings.batch, self.settings.lease_seconds,
                               self.settings.max_attempts, self.kinds)
        for job in jobs:
            self.process(job)
        return len(jobs)

    def process(self, job: Job) -> str:
        """Processes one taken job. Returns the instance's new state, 'retry' when the job
        was given back to try later, or 'superseded' when it was taken again meanwhile."""
        if job.kind == SEGMENT:
            return self.segment_job(job)
        if job.kind == PRETRAIN:
            return self.pretrain_job(job)
        catalog = self.core.catalog
        rec = catalog.get_instance(job.target)
        if rec is None:  # removed since it was queued
            self.queue.done(job)
            return "superseded"
        try:
            if rec.sop_class_uid == SEG_STORAGE:
                result = derive_labels(self.core, rec)
            else:
                recipe = (Recipe.from_mapping(json.loads(job.params)) if job.params
                          else self.default)
                result = derive(self.core.fs, rec.object_key, recipe, self.filter,
                                self.core.settings.processing.max_pixels)
        except (NodeError, OSError, ValueError, MemoryError) as exc:
            # MemoryError: an image too large for this worker; others may be fine.
            return self._failed(job, exc, f"processing {job.target}")
        if not self.queue.finish(job, result.state, result.blank, result.recipe_id):
            log.info("%s was queued again meanwhile; this result is not recorded", job.target)
            return "superseded"
        if result.learn is not None:
            self.filter.learnt(result.learn)
        log.info(_DONE.get(result.state, "%s: " + result.state)
                 + (" (flagged blank)" if result.blank else ""), job.target)
        if result.state == State.PROCESSED:
            self._labels_from_earlier_segs(rec)
        return result.state

    def _labels_from_earlier_segs(self, rec: InstanceRecord) -> None:
        """An image that arrived after its DICOM SEG gets its label map now."""
        from node.ai import labels

        try:
            for seg_uid in labels.match_waiting(self.core, rec):
                log.info("labels of %s from DICOM SEG %s, which arrived before it",
                         rec.sop_uid, seg_uid)
        except (NodeError, OSError, ValueError, KeyError) as exc:  # the image stays processed
            log.warning("labels of %s from an earlier DICOM SEG: %s", rec.sop_uid, exc)

    def segment_job(self, job: Job) -> str:
        """Segments a complete series with the job's model, once its images are processed.
        Returns 'segmented', 'waiting' (images still queued), 'retry' or 'failed'."""
        from node.ai import runs  # torch: imported by the workers that segment only
        from node.api import Node

        model, sops = segment_params(job.params or "")
        records = list(self.core.catalog.instances(series_uid=job.target))
        if sops is not None:
            records = [r for r in records if r.sop_uid in set(sops)]
        if any(r.state == State.QUEUED for r in records):
            self.queue.postpone(job, 10.0)
            return "waiting"
        try:
            result = runs.segment_series(Node(self.core), model, records,
                                         device=self.segment.device)
        except (NodeError, OSError, ValueError, RuntimeError) as exc:
            return self._failed(job, exc, f"segmenting series {job.target}")
        self.queue.done(job)
        log.info("segmented series %s with %s: %d images%s%s", job.target, job.params,
                 result.images, f", DICOM SEG {result.seg_uid}" if result.seg_uid else "",
                 f" ({result.note})" if result.note else "")
        return "segmented"

    def pretrain_job(self, job: Job) -> str:
        """DeepCluster on every processed, non-blank image with the job's settings; the
        encoder goes into the library. Returns 'pretrained', 'retry' or 'failed'."""
        from node.ai import dataset, runs
        from node.api import Node
        from pipelines.models import NetConfig
        from pipelines.pretrain.deepcluster import DeepClusterConfig

        node = Node(self.core)
        try:
            p = json.loads(job.params or "{}")
            records = dataset.select(node)
            entry = runs.pretrain(node, NetConfig(p["arch"]), records, DeepClusterConfig(
                clusters=min(int(p["clusters"]), max(2, len(records) // 2)),
                epochs=int(p["epochs"]), device=p.get("device", "cpu"),
                pca_dim=min(256, max(2, len(records) - 1))), size=int(p["size"]) or None)
        except (NodeError, OSError, ValueError, KeyError, RuntimeError) as exc:
            return self._failed(job, exc, "pretraining")
        self.queue.done(job)
        log.info("pretrained %s on %d images", entry.id, len(records))
        return "pretrained"

    def _failed(self, job: Job, exc: BaseException, what: str) -> str:
        """Gives a job back after ``exc``: retried later, or failed for good after
        ``max_attempts``. Returns 'retry' or 'failed' (State.FAILED)."""
        why = f"{type(exc).__name__}: {exc}"
        if _out_of_space(exc):
            # Not the job's fault: it is tried again, as often as it takes, once there is
            # room (the receivers refuse new instances meanwhile: node.pressure).
            self.queue.postpone(job, _NO_SPACE_RETRY_S)
            log.warning("%s postponed: no space left to write its outputs", what)
            return "retry"
        if _caused_by(exc, NotUploadedError):
            # Received by another node sharing the index, still in its spool: not the
            # job's fault either; there in a moment.
            self.queue.postpone(job, _NOT_UPLOADED_RETRY_S)
            log.info("%s postponed: its original is not uploaded yet", what)
            return "retry"
        final = self.queue.fail(job, why, self.settings.max_attempts)
        log.error("%s failed (attempt %d%s): %s", what, job.attempts,
                  ", giving up" if final else ", will retry", why)
        return State.FAILED if final else "retry"


_NO_SPACE_RETRY_S = 30.0
_NOT_UPLOADED_RETRY_S = 2.0


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and what caused it, outermost first (at most 10 deep)."""
    seen = 0
    while exc is not None and seen < 10:
        yield exc
        exc = exc.__cause__ or exc.__context__
        seen += 1


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or what caused it is a ``kind``."""
    return any(isinstance(e, kind) for e in _causes(exc))


def _out_of_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or quota."""
    return any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
               for e in _causes(exc))
