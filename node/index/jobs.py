"""The job queue: rows in the index, taken by any number of workers.

A job is queued in the transaction that indexes its instance, so an acknowledged instance
is never without one. A worker *takes* jobs (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so
workers never wait on each other; SQLite: writers are serialised anyway), which leases them
for a while and gives them a fresh token. Its result is recorded, and the job deleted, in
one transaction that checks the token: a job whose worker died is taken again once its
lease runs out (at once, for a dead worker on this host), and the late worker's result, if
it ever comes, is not recorded twice. A job that fails ``max_attempts`` times is kept as
failed, with its error, and its instance is marked failed.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from node.index import schema as s
from node.index.records import State
from node.index.transactions import Transactions

PROCESS = "process"
QUEUED, RUNNING, FAILED = "queued", "running", "failed"
_ERROR_MAX = 500


@dataclass(frozen=True)
class Job:
    """A taken job: ``target`` is what it works on (a SOP Instance UID for processing);
    ``params`` its parameters as JSON (for processing, the recipe; None: the default)."""

    pk: int
    target: str
    params: str | None
    attempts: int
    token: str
    kind: str = "process"


@dataclass(frozen=True)
class Counts:
    """Jobs by state, instances by processing state, images flagged blank, images with a
    label map, and jobs failed for good by kind (process, segment, pretrain)."""

    jobs: dict[str, int]
    instances: dict[str, int]
    blank: int
    labelled: int = 0
    failed_jobs: dict[str, int] = field(default_factory=dict)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting or being worked on."""
        return self.jobs.get(QUEUED, 0) + self.jobs.get(RUNNING, 0)


def worker_name() -> str:
    """``host~space:pid`` of this process, as recorded on the jobs it takes: ``space``
    names the process-id namespace, so that a process id is judged (release_dead) only
    where it means the same process (containers may share a host name, not process ids)."""
    return f"{_pid_space()}:{os.getpid()}"


def _pid_space() -> str:
    """This host's name and, on Linux, its process-id namespace."""
    try:
        return f"{socket.gethostname()}~{os.stat('/proc/self/ns/pid').st_ino:x}"
    except OSError:
        return socket.gethostname()


def enqueue(conn: Connection, sop_uids: Sequence[str], now: datetime,
            recipe: str | None = None, kind: str = PROCESS) -> None:
    """Queues a processing job for each instance, inside the caller's transaction.

    A job already there is queued again with ``recipe`` and a clean slate; if a worker is
    on it, that worker's result will not be recorded (its token no longer matches).
    """
    if not sop_uids:
        return
    conn.execute(_requeue(conn.dialect.name),
                 [{"kind": kind, "target": uid, "params": recipe, "state": QUEUED,
                   "attempts": 0, "created_at": now} for uid in sop_uids])


@functools.cache
def _requeue(dialect_name: str) -> Any:
    """INSERT … ON CONFLICT (kind, target) DO UPDATE to a clean, queued job: built once
    per dialect (ingest runs it for every instance)."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    stmt = dialect.insert(s.jobs)
    return stmt.on_conflict_do_update(
        index_elements=["kind", "target"],
        set_={"params": stmt.excluded.params, "state": QUEUED, "attempts": 0,
              "lease_until": None, "worker": None, "token": None, "error": None},
    )


class JobQueue:
    """Takes and settles processing jobs in ``catalog`` on behalf of one worker."""

    def __init__(self, catalog: Transactions, worker: str | None = None) -> None:
        self.catalog = catalog
        self.worker = worker or worker_name()

    def take(self, n: int, lease_seconds: float, max_attempts: int,
             kinds: tuple[str, ...] = (PROCESS,)) -> list[Job]:
        """Leases up to ``n`` jobs of ``kinds``, oldest first, to this worker.

        Jobs whose lease ran out ``max_attempts`` times (their worker died on them each
        time) are marked failed instead. Raises CatalogError.
        """
        def work(conn: Connection) -> list[Job]:
            now = datetime.now(UTC)
            due = and_(s.jobs.c.kind.in_(kinds), s.jobs.c.state.in_((QUEUED, RUNNING)),
                       or_(s.jobs.c.lease_until.is_(None), s.jobs.c.lease_until <= now))
            worn = conn.execute(select(s.jobs.c.kind, s.jobs.c.target).where(
                due, s.jobs.c.state == RUNNING, s.jobs.c.attempts >= max_attempts)).all()
            for kind in {k for k, _ in worn}:
                self._settle_failed(conn, [t for k, t in worn if k == kind],
                                    "the worker stopped during every attempt", kind)
            pick = select(s.jobs.c.pk).where(due).order_by(s.jobs.c.pk).limit(n)
            if conn.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            token = secrets.token_hex(8)
            rows = conn.execute(
                update(s.jobs).where(s.jobs.c.pk.in_(pick.scalar_subquery()))
                .values(state=RUNNING, worker=self.worker, token=token,
                        lease_until=now + timedelta(seconds=lease_seconds),
                        attempts=s.jobs.c.attempts + 1)
                .returning(s.jobs.c.pk, s.jobs.c.target, s.jobs.c.params, s.jobs.c.attempts,
                           s.jobs.c.kind)
            ).all()
            return sorted((Job(r.pk, r.target, r.params, r.attempts, token, r.kind)
                           for r in rows),
                          key=lambda j: j.pk)

        return self.catalog.transaction("taking jobs", work)

    def finish(self, job: Job, state: str, blank: bool | None, recipe_id: str | None) -> bool:
        """Records a job's result on its instance and deletes the job, in one transaction.

        Returns False (and records nothing) when the job was taken again or requeued
        since this worker took it. Raises CatalogError.
        """
        def work(conn: Connection) -> bool:
            if conn.execute(delete(s.jobs).where(_mine(job))).rowcount != 1:
                return False
            conn.execute(update(s.instances).where(s.instances.c.sop_uid == job.target)
                         .values(state=state, blank=blank, recipe_id=recipe_id))
            return True

        return self.catalog.transaction(f"recording the result for {job.target}", work)

    def fail(self, job: Job, error: str, max_attempts: int, retry_after: float = 5.0) -> bool:
        """Gives a job back after an error: queued again after ``retry_after`` seconds, or
        failed for good (instance marked failed) after ``max_attempts``.

        Returns True when it failed for good. Raises CatalogError.
        """
        error = error[:_ERROR_MAX]

        def work(conn: Connection) -> bool:
            if job.attempts >= max_attempts:
                if conn.scalar(select(s.jobs.c.pk).where(_mine(job))) is None:
                    return False
                self._settle_failed(conn, [job.target], error, job.kind)
                return True
            conn.execute(update(s.jobs).where(_mine(job)).values(
                state=QUEUED, worker=None, token=None, error=error,
                lease_until=datetime.now(UTC) + timedelta(seconds=retry_after)))
            return False

        return self.catalog.transaction(f"giving back the job of {job.target}", work)

    @staticmethod
    def _settle_failed(conn: Connection, targets: list[str], error: str,
                       kind: str = PROCESS) -> None:
        conn.execute(update(s.jobs).where(s.jobs.c.kind == kind, s.jobs.c.target.in_(targets))
                     .values(state=FAILED, token=None, lease_until=None, error=error))
        if kind == PROCESS:
            conn.execute(update(s.instances).where(s.instances.c.sop_uid.in_(targets))
                         .values(state=State.FAILED))

    def done(self, job: Job) -> bool:
        """Deletes a finished job that records nothing on an instance (segment, pretrain).
        Returns False when it was taken again or requeued meanwhile. Raises CatalogError."""
        return self.catalog.transaction(
            f"finishing the {job.kind} job of {job.target}",
            lambda conn: conn.execute(delete(s.jobs).where(_mine(job))).rowcount == 1)

    def postpone(self, job: Job, seconds: float) -> None:
        """Gives a job back, untried, to be taken again after ``seconds`` (it waits for
        something else, e.g. the processing of its series). Raises CatalogError."""
        self.catalog.transaction(
            f"postponing the {job.kind} job of {job.target}",
            lambda conn: conn.execute(update(s.jobs).where(_mine(job)).values(
                state=QUEUED, worker=None, token=None, attempts=s.jobs.c.attempts - 1,
                lease_until=datetime.now(UTC) + timedelta(seconds=seconds))))

    def requeue(self, sop_uids: Iterable[str], recipe: str | None = None,
                batch: int = 500) -> int:
        """Queues the given instances for processing again (``reprocess``), a batch per
        transaction; their state becomes queued. Returns how many. Raises CatalogError."""
        total = 0
        chunk: list[str] = []

        def work(conn: Connection) -> None:
            enqueue(conn, chunk, datetime.now(UTC), recipe)
            conn.execute(update(s.instances).where(s.instances.c.sop_uid.in_(chunk))
                         .values(state=State.QUEUED))

        for uid in sop_uids:
            chunk.append(uid)
            if len(chunk) >= batch:
                self.catalog.transaction("queueing jobs", work)
                total += len(chunk)
                chunk = []
        if chunk:
            self.catalog.transaction("queueing jobs", work)
            total += len(chunk)
        return total

    def release_dead(self) -> int:
        """Ends at once the leases held by workers of this host (and process-id namespace)
        that no longer run (a killed ``serve`` or ``worker``), so their jobs need not wait
        out the lease. Others' jobs (another host, another container) are released when
        their lease runs out. Returns how many jobs were released. Raises CatalogError."""
        prefix = _pid_space() + ":"

        def work(conn: Connection) -> int:
            holders = conn.scalars(select(s.jobs.c.worker).distinct().where(
                s.jobs.c.state == RUNNING, s.jobs.c.worker.like(f"{prefix}%")))
            pids = {w: w[len(prefix):] for w in holders  # LIKE's _ matches any character
                    if w and w.startswith(prefix)}
            dead = [w for w, pid in pids.items() if pid.isdigit() and not _alive(int(pid))]
            if not dead:
                return 0
            return conn.execute(update(s.jobs).where(
                s.jobs.c.state == RUNNING, s.jobs.c.worker.in_(dead))
                .values(lease_until=datetime.now(UTC))).rowcount

        return self.catalog.transaction("releasing jobs of stopped workers", work)

    def depth(self) -> int:
        """Jobs waiting or being worked on (one count; cheaper than ``counts``).
        Raises CatalogError."""
        stmt = select(func.count()).select_from(s.jobs).where(
            s.jobs.c.state.in_((QUEUED, RUNNING)))
        return self.catalog.reading("counting queued jobs",
                                    lambda conn: int(conn.scalar(stmt) or 0))

    def counts(self) -> Counts:
        """Jobs by state, instances by processing state, flagged images. Raises CatalogError."""
        def read(conn: Connection) -> Counts:
            jobs = {str(r[0]): int(r[1]) for r in conn.execute(
                select(s.jobs.c.state, func.count()).group_by(s.jobs.c.state))}
            states = {str(r[0]): int(r[1]) for r in conn.execute(
                select(s.instances.c.state, func.count()).group_by(s.instances.c.state))}
            blank = conn.scalar(select(func.count()).select_from(s.instances)
                                .where(s.instances.c.blank.is_(True))) or 0
            labelled = conn.scalar(select(func.count()).select_from(s.instances)
                                   .where(s.instances.c.labels.is_not(None))) or 0
            failed = {str(r[0]): int(r[1]) for r in conn.execute(
                select(s.jobs.c.kind, func.count()).where(s.jobs.c.state == FAILED)
                .group_by(s.jobs.c.kind))}
            return Counts(jobs, states, int(blank), int(labelled), failed)

        return self.catalog.reading("counting jobs", read)

    def failures(self, limit: int = 20, kinds: tuple[str, ...] = (PROCESS,)
                 ) -> list[tuple[str, str]]:
        """(target, error) of jobs of ``kinds`` failed for good, newest first: for
        processing the SOP Instance UID, for segmentation the series. Raises CatalogError."""
        return [(target, error) for _, target, error in self.failed_jobs(limit, kinds)]

    def failed_jobs(self, limit: int = 20, kinds: tuple[str, ...] | None = None
                    ) -> list[tuple[str, str, str]]:
        """(kind, target, error) of jobs failed for good (of ``kinds``; None: every kind),
        newest first. Raises CatalogError."""
        stmt = select(s.jobs.c.kind, s.jobs.c.target, s.jobs.c.error).where(
            s.jobs.c.state == FAILED)
        if kinds is not None:
            stmt = stmt.where(s.jobs.c.kind.in_(kinds))
        stmt = stmt.order_by(s.jobs.c.pk.desc()).limit(limit)
        return self.catalog.reading(
            "listing failed jobs",
            lambda conn: [(r.kind, r.target, r.error or "") for r in conn.execute(stmt)])


def _mine(job: Job) -> ColumnElement[bool]:
    """The job's row, as long as it is still the take that ``job`` holds (same token)."""
    return and_(s.jobs.c.pk == job.pk, s.jobs.c.token == job.token)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
