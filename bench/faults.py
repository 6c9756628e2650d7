"""The fault suite: real processes, real faults, and a table of what was lost (nothing).

``make faults`` (or ``.venv/bin/python bench/faults.py``) runs the long version; ``--short``
the one ``make test`` runs (tests/test_faults.py). Every scenario drives
``support-node serve`` as a subprocess and dcmtk's ``storescu`` as the sender, then holds
what the senders were told against what the node holds (bench/faults_check.py):

- kill: kill -9 of serve's whole process group at a random moment of a push (1 and 4
  associations in turn), restart, resend what was not acknowledged; every round.
- s3: SeaweedFS killed mid-push, started again after a pause.
- postgres: the PostgreSQL index stopped (immediate mode, as a crash) mid-push, started again.
- disk: the home on a small tmpfs (needs root): half pushed, filled below the watermark, the
  rest pushed (0xA700), filled to the last byte; the processing worker starts while it is
  full (it cannot even lease a job: SQLite is full too); then space is freed.
- disk-store: the same with only the local store on the small tmpfs: the worker leases jobs
  and cannot write their outputs (it must postpone them, not fail them).
- senders: 16 associations at once, each also sending some of its neighbour's instances.
- malformed: mutated real files (bench/faults_corpus.py) over DIMSE (pynetdicom, the bytes
  as they are) and the same corpus through STOW-RS, one case per request.

Columns: acknowledged (instances the senders were told were stored), present (indexed, and
the original decrypts to the bytes sent), duplicates (a second folder or conflict copy of
one), processed (its processing recorded, output there, no job left), verify problems
(``support-node verify``: failed objects, folders without rows, rows without objects, temp
files), recover (seconds from the fault's end to the node storing again).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.faults_check import Findings, check, wait_processed  # noqa: E402
from bench.faults_env import (  # noqa: E402
    Postgres,
    Push,
    Pushed,
    Seaweed,
    Serve,
    Worker,
    push,
    split,
)
from pipelines import synthetic  # noqa: E402

SIZE = 64  # image side: the faults are about bookkeeping, not pixels


@dataclass
class Plan:
    rounds: int = 50
    per_round: int = 500
    outage_instances: int = 300
    senders: int = 16
    per_sender: int = 200
    cases: int = 1000
    seed: int = 12
    only: tuple[str, ...] = ()
    work: Path | None = None

    @classmethod
    def short(cls) -> Plan:
        """The version ``make test`` runs: every scenario but the full store disk (its
        postponed jobs wait 30 s before they are tried again; tests/processing/test_worker.py
        tests the postponing itself)."""
        return cls(rounds=5, per_round=30, outage_instances=60, senders=16, per_sender=6,
                   cases=200, only=("kill", "postgres", "s3", "disk", "senders", "malformed"))


@dataclass
class Row:
    scenario: str
    rounds: int
    acknowledged: int
    present: int
    duplicates: int
    processed: int
    verify_problems: int
    recover_s: str
    notes: str = ""
    ok: bool = True
    details: list[str] = field(default_factory=list)


class Corpus:
    """Generated CT instances, one folder per batch, never reused between batches."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.seed = seed
        self.batches = 0

    def batch(self, n: int) -> list[Path]:
        self.batches += 1
        folder = self.root / f"batch{self.batches:04d}"
        patient = synthetic.Patient(patient_id=f"FAULT{self.batches:04d}")
        return [synthetic.write(ds, folder) for ds in
                synthetic.ct_series(n, SIZE, patient=patient, seed=self.seed + self.batches)]


def _row(name: str, rounds: int, found: Findings, recover: str, notes: str = "") -> Row:
    return Row(name, rounds, found.acknowledged, found.present, found.duplicates,
               found.processed, found.verify_problems, recover, notes, found.ok,
               found.notes[:20])


def _resend(serve: Serve, pending: list[Path], acked: set[Path], assocs: int = 4,
            tries: int = 5) -> list[Path]:
    """Sends ``pending`` until each is acknowledged (at most ``tries`` passes); returns what
    is still not acknowledged."""
    for _ in range(tries):
        if not pending:
            break
        got = push(pending, serve.port, assocs).acknowledged
        acked |= got
        pending = [p for p in pending if p not in got]
    return pending


def _finish(name: str, serve: Serve, env: dict[str, str], rounds: int, pending: list[Path],
            acked: set[Path], recover: str, notes: str = "",
            also_stop: Callable[[], None] | None = None) -> Row:
    """Resends what is left, waits for processing, stops the node (and ``also_stop``, its
    separate worker), checks."""
    left = _resend(serve, pending, acked)
    try:
        # 50 kill rounds leave ~25000 instances to process: 600 s, or 0.1 s each.
        wait_processed(serve.home, env, timeout=max(600.0, 0.1 * len(acked)))
    except TimeoutError as exc:
        notes += f" {exc}"
    if also_stop is not None:
        also_stop()
    serve.stop()
    found = check(serve.home, env, acked)
    if left:
        found.notes.append(f"{len(left)} never acknowledged")
    row = _row(name, rounds, found, recover, notes.strip())
    row.ok = row.ok and not left
    return row


# -- scenarios ---------------------------------------------------------------------------------

def scenario_kill(plan: Plan, work: Path, corpus: Corpus, rng: random.Random) -> Row:
    serve = Serve(work / "kill-home", {})
    acked: set[Path] = set()
    pending: list[Path] = []
    restarts: list[float] = []
    rate = 40.0  # instances per second, learnt as rounds go
    killed_mid = 0
    for r in range(plan.rounds):
        files = pending + corpus.batch(plan.per_round)
        restarts.append(serve.start())
        assocs = 1 if r % 2 == 0 else 4
        sending = Push(split(files, assocs), serve.port)
        expected = len(files) / rate
        time.sleep(rng.uniform(0.05, max(0.3, expected * 0.9)))
        spent = time.monotonic() - sending.started
        serve.kill()
        got = sending.wait(120).acknowledged
        if len(got) < len(files):
            killed_mid += 1
        if spent > 0.5 and got:
            rate = 0.5 * rate + 0.5 * len(got) / spent
        acked |= got
        pending = [p for p in files if p not in got]
    restarts.append(serve.start())
    recover = f"{statistics.median(restarts):.1f} (max {max(restarts):.1f})"
    return _finish("kill -9 serve", serve, {}, plan.rounds, pending, acked, recover,
                   f"{killed_mid}/{plan.rounds} kills interrupted a push")


def _probe_until_stored(serve: Serve, pending: list[Path], acked: set[Path],
                        timeout: float = 120) -> float:
    """Sends one pending instance at a time until one is acknowledged; returns the seconds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        probe = pending[0]
        if probe in push([probe], serve.port, 1, timeout=60).acknowledged:
            acked.add(probe)
            pending.remove(probe)
            return time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"nothing stored {timeout:.0f} s after the fault ended")


def _outage(name: str, plan: Plan, serve: Serve, env: dict[str, str], corpus: Corpus,
            rng: random.Random, down: Callable[[], None], up: Callable[[], object]) -> Row:
    """Pushes, takes a dependency ``down`` mid-push, keeps pushing into the outage, brings it
    ``up``, measures until the node stores again, resends the rest, checks."""
    serve.start()
    files = corpus.batch(plan.outage_instances)
    acked: set[Path] = set()
    mark = _Clock(name)
    sending = Push(split(files, 4), serve.port)
    time.sleep(rng.uniform(0.3, 1.0))
    down()
    mark("down")
    first = sending.wait(300)
    mark("first push ended")
    acked |= first.acknowledged
    pending = [p for p in files if p not in first.acknowledged]
    # Senders keep trying during the outage: each must get a failure, not a success.
    during: Pushed = push(pending[:8], serve.port, 2, timeout=120) if pending else Pushed()
    wrongly = len(during.acknowledged)
    acked |= during.acknowledged
    pending = [p for p in pending if p not in during.acknowledged]
    statuses = Counter(_status_name(a) for a in [*first.refused.values(),
                                                  *during.refused.values()])
    alive = serve.alive()
    mark("pushed into the outage")
    up()
    mark("up again")
    recover = _probe_until_stored(serve, pending, acked) if pending else 0.0
    mark("stored again")
    notes = (f"during the outage: {dict(statuses)}; node up: {alive}; "
             f"{wrongly} acknowledged while down")
    row = _finish(name, serve, env, 1, pending, acked, f"{recover:.1f}", notes)
    row.ok = row.ok and alive
    return row


class _Clock:
    """Prints how long each phase of a scenario took (stderr), for whoever watches."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last = time.monotonic()

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        print(f"  {self.name}: {what} (+{now - self.last:.1f} s)", file=sys.stderr)
        self.last = now


def _status_name(answer: str) -> str:
    return answer.split(":")[0].strip() or answer


def scenario_s3(plan: Plan, work: Path, corpus: Corpus, rng: random.Random) -> Row:
    weed = Seaweed(work / "seaweed")
    weed.start()
    env = weed.node_env("faults")
    try:
        serve = Serve(work / "s3-home", env)

        def up() -> None:
            time.sleep(3.0)  # the outage lasts a while
            weed.start()
        return _outage("S3 (SeaweedFS) killed", plan, serve, env, corpus, rng, weed.kill, up)
    finally:
        weed.stop()


def scenario_postgres(plan: Plan, work: Path, corpus: Corpus, rng: random.Random) -> Row:
    # Under /tmp, not the work folder: the postgres user must reach it (a pytest tmp dir
    # is its owner's only).
    pg = Postgres(Path(tempfile.mkdtemp(prefix="faults-pg-")))
    pg.start()
    env = {"SUPPORT_NODE_INDEX_URL": pg.url()}
    try:
        serve = Serve(work / "pg-home", env)

        def up() -> None:
            time.sleep(3.0)
            pg.start()
        return _outage("PostgreSQL stopped", plan, serve, env, corpus, rng, pg.stop, up)
    finally:
        pg.stop("fast")
        shutil.rmtree(pg.dir, ignore_errors=True)


def scenario_senders(plan: Plan, work: Path, corpus: Corpus, rng: random.Random) -> Row:
    serve = Serve(work / "senders-home", {"SUPPORT_NODE_DIMSE_MAX_ASSOCIATIONS": "20",
                                          "SUPPORT_NODE_DIMSE_MAX_CONNECTIONS_PER_ADDRESS": "20"})
    serve.start()
    groups = [corpus.batch(plan.per_sender) for _ in range(plan.senders)]
    # Each sender also sends a quarter of its neighbour's instances, at the same time.
    doubled = [g + rng.sample(groups[(i + 1) % len(groups)], max(1, len(g) // 4))
               for i, g in enumerate(groups)]
    started = time.monotonic()
    first = Push(doubled, serve.port).wait(600)
    wall = time.monotonic() - started
    acked = set(first.acknowledged)
    every = [p for g in groups for p in g]
    again = rng.sample(every, max(1, len(every) // 10))  # resent afterwards, on purpose
    acked |= push(again, serve.port, 4).acknowledged
    pending = [p for p in every if p not in acked]
    sent = sum(len(g) for g in doubled) + len(again)
    return _finish(f"{plan.senders} senders + duplicates", serve, {}, 1, pending, acked, "-",
                   f"{sent} sends of {len(every)} instances in {wall:.1f} s, "
                   f"{len(first.refused)} refused")


def scenario_disk(plan: Plan, work: Path, corpus: Corpus, rng: random.Random) -> Row:
    """The home (index, spool, store) on a small filesystem that fills."""
    del rng
    return _on_small_disk(work, "disk full",
                          lambda mount: _disk_full(plan, mount, corpus, store_only=False))


def scenario_disk_store(plan: Plan, work: Path, corpus: Corpus, rng: random.Random) -> Row:
    """Only the local store on the small filesystem: the index can still lease jobs, so the
    worker meets the full disk when it writes outputs (it must postpone the jobs)."""
    del rng
    return _on_small_disk(work, "store disk full",
                          lambda mount: _disk_full(plan, mount, corpus, store_only=True))


def _on_small_disk(work: Path, name: str, body: Callable[[Path], Row]) -> Row:
    mount = work / name.replace(" ", "-")
    mount.mkdir()
    # Big enough that the watermark (8 MiB here; at most 5% of the filesystem) holds more
    # than a second of pushing: the node reads free space once a second.
    size_mb = 256
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700",
                           "tmpfs", str(mount)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        reason = (made.stderr.strip() or "mount failed").splitlines()[-1]
        return Row(name, 0, 0, 0, 0, 0, 0, "-", f"skipped: cannot mount a small "
                   f"filesystem here ({reason}); needs root", ok=True)
    try:
        return body(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


_DISK_CONFIG = """\
# The full-disk scenario: processing by a separate worker process, started once the disk is
# full, and outputs of the instances' own size, so that everything fits once space is freed.
[processing]
workers = 0
recipe = "small"

[recipes.small]
size = 64
"""


def _fill(path: Path, leave: int = 0) -> None:
    """Writes ``path`` until ``leave`` bytes are free (0: until the filesystem says full)."""
    chunk = b"\0" * (64 << 10)
    with path.open("ab", buffering=0) as fh:
        try:
            while shutil.disk_usage(path.parent).free > leave + len(chunk):
                fh.write(chunk)
            if not leave:
                while True:
                    fh.write(b"\0" * 4096)
        except OSError:  # ENOSPC: full
            pass


def _disk_full(plan: Plan, mount: Path, corpus: Corpus, store_only: bool) -> Row:
    """Pushes half, fills the home's filesystem below its watermark and pushes the rest
    (0xA700 each), then fills it to the last byte (still 0xA700); the processing worker
    starts only then (its outputs do not fit: it must postpone the jobs, not fail them);
    frees the space; everything acknowledged must end stored and processed."""
    name = "store disk full" if store_only else "disk full"
    config = mount.parent / f"{mount.name}.toml"  # outside the small filesystem
    config.write_text(_DISK_CONFIG)
    env = {"SUPPORT_NODE_CONFIG": str(config), "SUPPORT_NODE_STORE_MIN_FREE_BYTES": str(8 << 20)}
    home = mount / "home"
    if store_only:
        home = mount.parent / f"{mount.name}-home"
        env["SUPPORT_NODE_STORE_URL"] = f"file://{mount / 'store'}"
    serve = Serve(home, env)
    worker = Worker(home, env)
    serve.start()
    try:
        return _fill_and_free(plan, mount, corpus, name, serve, worker, env)
    finally:  # also when a step raises: nothing of the scenario may outlive it
        worker.stop()
        if serve.alive():
            serve.kill()


def _fill_and_free(plan: Plan, mount: Path, corpus: Corpus, name: str, serve: Serve,
                   worker: Worker, env: dict[str, str]) -> Row:
    mark = _Clock(name)
    ballast, filler = mount / "ballast", mount / "filler"
    n = max(plan.outage_instances, 60)
    files = corpus.batch(n)
    first = push(files[: n // 2], serve.port, 4)
    mark(f"pushed {n // 2} with room")
    # Below the watermark (8 MiB here), not yet full; then the rest, after the node's
    # once-a-second reading of free space has seen it.
    _fill(ballast, leave=4 << 20)
    time.sleep(1.5)
    first.answers.update(push(files[n // 2:], serve.port, 4).answers)
    mark(f"pushed {n - n // 2} below the watermark")
    acked = set(first.acknowledged)
    pending = [p for p in files if p not in acked]
    _fill(filler)  # the last byte, as the processing outputs of a real recipe would
    during = push(pending[:8], serve.port, 2, timeout=120) if pending else Pushed()
    acked |= during.acknowledged
    pending = [p for p in pending if p not in during.acknowledged]
    wrongly = len(acked & set(files[n // 2:]))  # acknowledged below the watermark or full
    statuses = Counter(_status_name(a) for a in [*first.refused.values(),
                                                  *during.refused.values()])
    worker.start()
    deadline = time.monotonic() + 60
    while not _waited(worker) and time.monotonic() < deadline and worker.alive():
        time.sleep(0.5)
    time.sleep(2.0)  # a little longer full: nothing may fail meanwhile
    postponed, paused = worker.count(_POSTPONED), worker.count(_INDEX_FULL)
    failed = worker.count(" failed (attempt")
    alive = serve.alive() and worker.alive()
    mark(f"full: {postponed} jobs postponed, {paused} pauses with a full index, "
         f"{failed} failed")
    ballast.unlink()
    filler.unlink()
    freed = time.monotonic()
    recover = _probe_until_stored(serve, pending, acked) if pending else 0.0
    recover = time.monotonic() - freed  # from freeing space to storing again
    mark("stored again")
    notes = (f"{len(first.acknowledged)} stored with room; refused (0xA700): "
             f"{sum(statuses.values())}; "
             f"{wrongly} acknowledged below the watermark; jobs while full: {postponed} "
             f"postponed, {paused} pauses (index full), {failed} failed; node up: {alive}")
    row = _finish(name, serve, env, 1, pending, acked, f"{recover:.1f}", notes,
                  also_stop=worker.stop)
    (mount.parent / f"{mount.name}-serve.log").write_text("".join(serve.lines))
    (mount.parent / f"{mount.name}-worker.log").write_text("".join(worker.lines))
    row.ok = row.ok and alive and wrongly == 0 and not failed and _waited(worker) \
        and len(first.acknowledged) == n // 2
    # storescu names every 0xA7xx alike; the node's log tells the watermark's 0xA700 from a
    # failed write (0xA701/0xA702: "could not keep an instance").
    failed_writes = sum("could not keep an instance" in line for line in serve.lines)
    if set(statuses) != {"Refused"} or failed_writes or not serve.log_has(_REFUSING):
        row.details.append(f"while full the senders were told {dict(statuses)}; "
                           f"{failed_writes} failed writes logged; watermark logged: "
                           f"{serve.log_has(_REFUSING)}")
        row.ok = False
    if not _waited(worker):
        row.details.append("the worker never met the full disk (did it fill?)")
    return row


_POSTPONED = "postponed: no space left"  # outputs did not fit: the job waits, untried
_INDEX_FULL = "database or disk is full"  # SQLite could not even lease: processing pauses


def _waited(worker: Worker) -> bool:
    return bool(worker.count(_POSTPONED) or worker.count(_INDEX_FULL))

_REFUSING = "refusing new instances for now"


def scenario_malformed(plan: Plan, work: Path, corpus: Corpus, rng: random.Random) -> Row:
    from bench.faults_malformed import run_malformed

    return run_malformed(plan.cases, work, corpus.batch(10), rng.randrange(1 << 30))


SCENARIOS: dict[str, Callable[[Plan, Path, Corpus, random.Random], Row]] = {
    "kill": scenario_kill, "s3": scenario_s3, "postgres": scenario_postgres,
    "disk": scenario_disk, "disk-store": scenario_disk_store, "senders": scenario_senders,
    "malformed": scenario_malformed,
}


def run(plan: Plan, report: Callable[[Row], None] = lambda row: None) -> list[Row]:
    """Runs the planned scenarios; returns one row each (a scenario that cannot run, a
    missing server, is a row with the reason and ok False)."""
    work = plan.work or Path(tempfile.mkdtemp(prefix="faults-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(work / "corpus", plan.seed)
    rng = random.Random(plan.seed)
    rows = []
    for name, scenario in SCENARIOS.items():
        if plan.only and name not in plan.only:
            continue
        started = time.monotonic()
        try:
            row = scenario(plan, work, corpus, rng)
        except (FileNotFoundError, RuntimeError, TimeoutError, OSError) as exc:
            row = Row(name, 0, 0, 0, 0, 0, 0, "-", f"could not run: {exc}"[:300], ok=False)
        row.notes = f"{row.notes} [{time.monotonic() - started:.0f} s]".strip()
        rows.append(row)
        report(row)
    if plan.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def table(rows: list[Row]) -> Table:
    t = Table("scenario", "rounds", "acknowledged", "present", "duplicates", "processed",
              "verify problems", "recover (s)", "ok", "notes",
              title="Nothing lost under faults", show_lines=True)
    for r in rows:
        t.add_row(r.scenario, str(r.rounds), str(r.acknowledged), str(r.present),
                  str(r.duplicates), str(r.processed), str(r.verify_problems), r.recover_s,
                  "yes" if r.ok else "[red]NO[/]", r.notes)
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the version make test runs")
    parser.add_argument("--rounds", type=int, help="kill rounds (default 50; short 5)")
    parser.add_argument("--per-round", type=int, help="new instances per kill round")
    parser.add_argument("--cases", type=int, help="malformed cases (default 1000)")
    parser.add_argument("--only", default="", help=f"comma list of {', '.join(SCENARIOS)}")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--work", type=Path, help="keep everything in this folder")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    plan = Plan.short() if args.short else Plan()
    plan.seed = args.seed
    plan.only = tuple(s for s in args.only.split(",") if s) or plan.only
    plan.work = args.work
    for key in ("rounds", "per_round", "cases"):
        if getattr(args, key) is not None:
            setattr(plan, key, getattr(args, key))
    console = Console(width=250)
    rows = run(plan, lambda row: console.print(f"{row.scenario}: "
                                               f"{'ok' if row.ok else 'FAILED'} {row.notes}"))
    console.print(table(rows))
    for r in rows:
        for line in r.details:
            console.print(f"  {r.scenario}: {line}", highlight=False)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
