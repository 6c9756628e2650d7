"""Preprocessing benchmark: what each image costs a worker, and whether the workers keep up.

    .venv/bin/python bench/preprocess_bench.py [--quick] [--instances N] [--reps R]
                                               [--workers N ...]

Table 1, in this process, on a real node (``Node.from_settings`` on a temp home: local store,
fsync on): the median ms per image of each step of ``node.processing.derive`` at 128, 256,
512 and 1024 pixels square (CT phantoms, uncompressed 16-bit), each step called through the
real function, beside pydicom decoding the same bytes (the baseline), the whole ``derive``
call on instances stored through the node's ingest, and the filter learning the Worker does
after each result (amortised).

Table 2: ``support-node serve`` (this checkout, fresh home, one DIMSE process) with 0, 1 and 2
processing workers, and bench/bare_scp.py (1 MiB PDU, the node's transport) as the baseline,
each sent the same 512² series by one ``storescu`` association (TCP_NODELAY=1). The queue is
sampled every 0.5 s by reading the node's SQLite index read-only from this process (starting
``support-node status --json`` that often would itself take most of a core from the node),
until the queue is empty; ``support-node status --json`` checks the end state. Target:
the queue does not grow during the second half of the send by more than 5% of the ingest
rate (PASS/MISS). Exit status 1 when a check could not run or an instance was lost or left
unprocessed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bench.receivers import (  # noqa: E402
    NODE_CLI,
    BarePynetdicom,
    Receiver,
    ReceiverError,
    SupportNode,
    clean_env,
    node_env,
    stop_process,
)
from node import describe  # noqa: E402
from node.api import Node  # noqa: E402
from node.index.jobs import QUEUED, RUNNING  # noqa: E402
from node.index.records import State  # noqa: E402
from node.layout import DESCRIPTION, ORIGINAL, OUTPUT, PREVIEW  # noqa: E402
from node.processing.derive import derive  # noqa: E402
from node.processing.shared_filter import SharedFilter  # noqa: E402
from node.settings import load  # noqa: E402
from pipelines.decode import decode  # noqa: E402
from pipelines.preprocess import grey, preprocess, preview_png  # noqa: E402
from pipelines.synthetic import ct_series, write  # noqa: E402

SIZES = (128, 256, 512, 1024)
DISTINCT = 10  # stored instances per size; the repetitions cycle over them
WARMUP = 2
SAMPLE_S = 0.5
SLOPE_TOLERANCE = 0.05  # of the ingest rate: a queue growing slower than this is "keeping up"
SEND_TIMEOUT = 600.0
DRAIN_TIMEOUT = 300.0
MIB = 1024 * 1024

out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err)


# -- table 1: cost per image -------------------------------------------------------------------

STEPS = {
    "pydicom": "pydicom dcmread + pixel_array (baseline)",
    "read": "read + decrypt original, description",
    "decode": "decode (modality LUT, float32)",
    "preprocess": "normalise + resize (default recipe)",
    "filter": "blank filter verdict (trained)",
    "preview": "preview PNG",
    "write": "np.save + encrypt + write (fsync)",
    "derive": "derive() end to end",
    "learn": "+ filter learning, amortised (Worker)",
    "learn1": "  the same with 1 BLAS thread (info)",
}
SUMMED = ("read", "decode", "preprocess", "filter", "preview", "write")
LEARN_CALLS = 96  # three PCA updates and three model saves at the defaults (every 32 rows)


@dataclass
class Costs:
    size: int
    reps: int
    output: str = ""
    ms: dict[str, float] = field(default_factory=dict)


def median_ms(steps: dict[str, Callable[[int], object]], reps: int) -> dict[str, float]:
    """Median wall time in ms of each ``step(i)`` over ``reps`` calls after WARMUP calls.

    The steps take turns (call i of every step, then call i + 1), so that a burst of load
    from elsewhere on the machine falls on all of them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(WARMUP + reps):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn(i)
            if i >= WARMUP:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000.0 for name, t in times.items()}


def cycle(items: list[Any]) -> Callable[[int], Any]:
    """``i -> items[i % len(items)]``: the repetitions go round the distinct instances."""
    return lambda i: items[i % len(items)]


def stage(node: Node, size: int, folder: Path) -> tuple[list[bytes], list[str]]:
    """DISTINCT phantoms of ``size``²: their Part-10 bytes, and their folders once stored
    through the node's ingest (as a C-STORE would store them)."""
    datas = [write(ds, folder).read_bytes() for ds in ct_series(DISTINCT, size)]
    keys = [node.write(data, via="import").object_key for data in datas]
    return datas, keys


def train(judge: SharedFilter, size: int) -> None:
    """Learns min_images phantoms as the worker would, so that verdicts use the PCA model."""
    for ds in ct_series(judge.settings.filter_min_images + 8, size, seed=1):
        _, row = judge.judge(grey(decode(_part10(ds))))
        if row is not None:
            judge.learnt(row)


def _part10(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def step_costs(node: Node, judge: SharedFilter, size: int, reps: int, folder: Path) -> Costs:
    """The median ms of every step of ``derive`` at ``size``², each through the real function."""
    fs, recipe = node.core.fs, node.core.settings.recipe()
    datas, keys = stage(node, size, folder)
    decoded = [decode(d) for d in datas]
    prepared = [preprocess(d, recipe) for d in decoded]
    for k in keys:
        derive(fs, k, recipe, judge)  # writes the outputs the write step rewrites
    docs = [describe.decode(fs.cat_file(f"{k}/{DESCRIPTION}")) for k in keys]
    data, key, image, ready = cycle(datas), cycle(keys), cycle(decoded), cycle(prepared)
    png, doc = cycle([preview_png(p) for p in prepared]), cycle(docs)

    def read(i: int) -> None:
        fs.cat_file(f"{key(i)}/{ORIGINAL}")
        describe.decode(fs.cat_file(f"{key(i)}/{DESCRIPTION}"))

    def write_outputs(i: int) -> None:
        buffer = io.BytesIO()
        np.save(buffer, ready(i).array, allow_pickle=False)
        fs.pipe_files({f"{key(i)}/{OUTPUT}": buffer.getvalue(), f"{key(i)}/{PREVIEW}": png(i),
                       f"{key(i)}/{DESCRIPTION}": describe.encode(doc(i))})

    steps: dict[str, Callable[[int], object]] = {
        "pydicom": lambda i: pydicom.dcmread(io.BytesIO(data(i))).pixel_array,
        "read": read,
        "decode": lambda i: decode(data(i)),
        "preprocess": lambda i: preprocess(image(i), recipe),
        "filter": lambda i: judge.judge(grey(image(i))),
        "preview": lambda i: preview_png(ready(i)),
        "write": write_outputs,
        "derive": lambda i: derive(fs, key(i), recipe, judge),
    }
    shape = ready(0).array
    costs = Costs(size, reps, f"{'×'.join(map(str, shape.shape))} {shape.dtype}",
                  median_ms(steps, reps))
    costs.ms["learn"] = learning_ms(judge, decoded)
    with threadpool_limits(1):
        costs.ms["learn1"] = learning_ms(judge, decoded)
    return costs


def learning_ms(judge: SharedFilter, decoded: list[Any]) -> float:
    """ms per image, amortised, of what the worker does after recording each result:
    ``SharedFilter.learnt`` (an IncrementalPCA update every 32 rows, then a model save)."""
    rows = cycle([judge.judge(grey(d))[1] for d in decoded])
    start = time.perf_counter()
    for i in range(LEARN_CALLS):
        if rows(i) is not None:
            judge.learnt(rows(i))
    return (time.perf_counter() - start) * 1000.0 / LEARN_CALLS


def measure_costs(reps: int, tmp: Path) -> list[Costs]:
    home = tmp / "costs-home"
    results = []
    with Node.from_settings(load(home=home, environ={}), create_keys=True) as node, \
            progress_bar() as bar:
        task = bar.add_task("cost per step: training the blank filter", total=len(SIZES) + 1)
        judge = SharedFilter(node.core.fs, node.core.catalog,
                             node.core.settings.processing)
        train(judge, 512)
        bar.advance(task)
        for size in SIZES:
            bar.update(task, description=f"cost per step: {size}²")
            results.append(step_costs(node, judge, size, reps, tmp / f"costs-{size}"))
            bar.advance(task)
    return results


def cost_table(results: list[Costs]) -> Table:
    table = Table(title=f"Preprocessing cost per image, CT phantom, explicit VR LE 16-bit "
                        f"(median ms of {results[0].reps} calls)",
                  caption="In this process, on one core, through the node's own functions on a "
                          "temp home (local store, fsync on). read: fs.cat_file of "
                          "original.dcm and description.json (AES-GCM). decode: "
                          "pipelines.decode. normalise + resize: pipelines.preprocess with the "
                          "default recipe (min-max, 512² keeping aspect, float16; stats). "
                          "blank filter: SharedFilter.judge on the native-size grey frame, the "
                          "PCA model trained on 64 phantoms first. write: np.save, "
                          "describe.encode and fs.pipe_files of output.npy, preview.png and "
                          "description.json (encrypt, temp file, fsync, rename, one directory "
                          "fsync). derive(): the worker's call on an instance stored through "
                          "the node's ingest; derive() − the sum of its steps is bookkeeping. "
                          "filter learning: SharedFilter.learnt, which the Worker calls after "
                          f"recording each result, timed over {LEARN_CALLS} calls / "
                          f"{LEARN_CALLS}; as the node runs it (BLAS threads: numpy's default), "
                          "and for information within threadpoolctl's threadpool_limits(1).",
                  title_justify="left", caption_justify="left")
    table.add_column("step", no_wrap=True)
    for c in results:
        table.add_column(f"{c.size}²", justify="right", no_wrap=True)
    for name, label in STEPS.items():
        style = "dim" if name in ("pydicom", "learn1") else ("bold" if name == "derive" else "")
        table.add_row(label, *(f"{c.ms[name]:.2f}" for c in results), style=style)
    table.add_row("sum of derive()'s steps",
                  *(f"{sum(c.ms[s] for s in SUMMED):.2f}" for c in results), style="dim")
    worker = [c.ms["derive"] + c.ms["learn"] for c in results]
    table.add_row("worker per image: derive() + learning", *(f"{w:.2f}" for w in worker),
                  style="bold")
    table.add_row("derive() / pydicom decode",
                  *(f"{c.ms['derive'] / c.ms['pydicom']:.0f}×" for c in results))
    table.add_row("one worker on one core", *(f"{1000 / w:.0f}/s" for w in worker))
    table.add_row("output (AI input)", *(c.output for c in results), style="dim")
    return table


# -- table 2: ingest with processing on ---------------------------------------------------------

class ProcessingNode(SupportNode):
    """``support-node serve`` (one DIMSE process) with ``--processing-workers N``; ready once
    C-ECHO answers and every worker logged that it is ready."""

    def __init__(self, processing: int) -> None:
        super().__init__(workers=1)
        self.processing = processing
        self.home = self.dir / "home"

    def command(self) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().command()
        return [*cmd, "--processing-workers", str(self.processing)], env

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + self.start_timeout
        while len(re.findall(r"processing worker \S+ ready", self.log_tail(100_000))) \
                < self.processing:
            if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                raise ReceiverError(f"processing workers did not start: {self.log_tail()}")
            time.sleep(0.1)

    def index_path(self) -> Path:
        return Path(str(make_url(load(home=self.home, environ={}).index.url).database))


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the send started
    stored: int
    queue: int
    processed: int


class IndexProbe:
    """Counts in the node's SQLite index, read-only (WAL: never blocks the node's writers)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)

    def sample(self, t: float) -> Sample:
        jobs = dict(self.conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"))
        stored, processed = self.conn.execute(
            "SELECT count(*), coalesce(sum(state = ?), 0) FROM instances",
            (State.PROCESSED,)).fetchone()
        return Sample(t, stored, jobs.get(QUEUED, 0) + jobs.get(RUNNING, 0), processed)

    def close(self) -> None:
        self.conn.close()


@dataclass
class IngestRun:
    label: str
    workers: int | None  # None: the bare SCP
    sent: int
    send_s: float = 0.0
    stored: int = 0
    samples: list[Sample] = field(default_factory=list)
    drain_s: float | None = None
    status: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def rate(self) -> float:
        return self.sent / self.send_s if self.send_s else 0.0

    @property
    def at_send_end(self) -> Sample | None:
        during = [s for s in self.samples if s.t <= self.send_s]
        return during[-1] if during else None


def storescu(folder: Path, rx: Receiver) -> subprocess.Popen[bytes]:
    log = (rx.dir / "storescu.log").open("wb")
    with log:
        return subprocess.Popen(
            ["storescu", "-aet", "BENCH", "-aec", rx.aet, "+sd", "127.0.0.1", str(rx.port),
             str(folder)], stdout=log, stderr=subprocess.STDOUT, env=clean_env(nodelay=True),
            stdin=subprocess.DEVNULL)


def send(run: IngestRun, folder: Path, rx: Receiver, probe: IndexProbe | None,
         bar: Progress) -> None:
    """Runs storescu over ``folder``, sampling ``probe`` every SAMPLE_S until it exits."""
    task = bar.add_task(f"{run.label}: sending", total=run.sent)
    start = time.perf_counter()
    proc = storescu(folder, rx)
    try:
        while proc.poll() is None:
            now = time.perf_counter() - start
            if now > SEND_TIMEOUT:
                raise ReceiverError(f"storescu still running after {SEND_TIMEOUT:.0f} s")
            if probe is not None:
                run.samples.append(probe.sample(now))
                bar.update(task, completed=run.samples[-1].stored)
            try:  # returns as soon as storescu exits, so the wall time is exact
                proc.wait(max(0.0, SAMPLE_S - (time.perf_counter() - start - now)))
            except subprocess.TimeoutExpired:
                pass
        run.send_s = time.perf_counter() - start
    finally:
        stop_process(proc, grace=2)
        bar.remove_task(task)
    if probe is not None:
        run.samples.append(probe.sample(run.send_s))
    if proc.returncode != 0:
        tail = (rx.dir / "storescu.log").read_text(errors="replace")[-300:]
        raise ReceiverError(f"storescu exited {proc.returncode}: {tail}")


def drain(run: IngestRun, probe: IndexProbe, bar: Progress) -> None:
    """Samples until the queue is empty; sets ``drain_s`` (from the end of the send)."""
    task = bar.add_task(f"{run.label}: draining", total=run.sent)
    start = time.perf_counter() - run.send_s
    try:
        while run.samples[-1].queue > 0 or run.samples[-1].stored < run.sent:
            now = time.perf_counter() - start
            if now - run.send_s > DRAIN_TIMEOUT:
                raise ReceiverError(f"queue not empty {DRAIN_TIMEOUT:.0f} s after the send: "
                                    f"{run.samples[-1]}")
            time.sleep(SAMPLE_S)
            run.samples.append(probe.sample(time.perf_counter() - start))
            bar.update(task, completed=run.samples[-1].processed)
    finally:
        bar.remove_task(task)
    run.drain_s = run.samples[-1].t - run.send_s


def node_status(home: Path) -> dict[str, Any]:
    """``support-node status --json`` on ``home``."""
    res = subprocess.run([*NODE_CLI, "status", "--json", "--home", str(home)],
                         capture_output=True, text=True, env=node_env(), check=False)
    if res.returncode != 0:
        raise ReceiverError(f"support-node status failed: {res.stderr[-400:]}")
    doc: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return doc


def check_status(run: IngestRun) -> None:
    """Data lost or left unprocessed is a failed run."""
    doc, n = run.status, run.sent
    if doc.get("instances") != n:
        run.error = f"the index holds {doc.get('instances')} instances of {n} sent"
    elif run.workers and (doc.get("processed") != n or doc.get("queue_depth") != 0):
        run.error = (f"processed {doc.get('processed')} of {n}, queue {doc.get('queue_depth')}"
                     f", failed {doc.get('failed')}")
    elif run.workers == 0 and doc.get("queue_depth") != n:
        run.error = f"queue {doc.get('queue_depth')}, not {n}, with no processing worker"


def measure_node(workers: int, folder: Path, n: int, bar: Progress) -> IngestRun:
    label = f"node, {workers} worker{'s' if workers != 1 else ''}"
    run = IngestRun(label + (" (processing off)" if not workers else ""), workers, n)
    rx = ProcessingNode(workers)
    probe = None
    try:
        rx.start()
        probe = IndexProbe(rx.index_path())
        send(run, folder, rx, probe, bar)
        run.stored = run.samples[-1].stored
        if workers:
            drain(run, probe, bar)
        probe.close()
        probe = None
        rx.stop()
        run.status = node_status(rx.home)
        check_status(run)
    except (ReceiverError, OSError, subprocess.SubprocessError, sqlite3.Error,
            ValueError) as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        if probe is not None:
            probe.close()
        rx.close()
    return run


def measure_bare(folder: Path, n: int, bar: Progress) -> IngestRun:
    run = IngestRun("bare pynetdicom (baseline)", None, n)
    rx = BarePynetdicom(MIB, tuned=True)
    try:
        rx.start()
        send(run, folder, rx, None, bar)
        run.stored = rx.finish()
        if run.stored != n:
            run.error = f"acknowledged {run.stored} of {n}"
    except (ReceiverError, OSError, subprocess.SubprocessError) as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        rx.close()
    return run


def slope(samples: list[Sample]) -> float:
    """Least-squares growth of the queue depth, jobs per second."""
    if len(samples) < 2:
        return 0.0
    t = np.array([s.t for s in samples])
    q = np.array([s.queue for s in samples], dtype=float)
    return float(np.polyfit(t, q, 1)[0]) if np.ptp(t) > 0 else 0.0


def second_half_slope(run: IngestRun) -> float:
    half = [s for s in run.samples if run.send_s / 2 <= s.t <= run.send_s]
    return slope(half)


def verdict(ok: bool) -> str:
    return "[bold green]PASS[/]" if ok else "[bold red]MISS[/]"


COLUMNS = ("receiver", "ingest /s", "vs bare", "processed /s: during send", "after",
           "overall", "max queue", "queue at end of send", "queue growth, 2nd half",
           "drain s", "keeps up?")


def ingest_row(run: IngestRun, bare: IngestRun) -> list[str]:
    blank = ["—"] * (len(COLUMNS) - 3)
    if run.error:
        return [escape(run.label), "[bold red]FAILED[/]", *[""] * (len(COLUMNS) - 2)]
    if run.workers is None:
        return [escape(run.label), f"{run.rate:.1f}", "1.00", *blank]
    vs_bare = f"{run.rate / bare.rate:.2f}" if bare.rate and not bare.error else "—"
    end = run.at_send_end
    assert end is not None
    during = f"{end.processed / run.send_s:.1f}"
    queue = [str(max(s.queue for s in run.samples)), str(end.queue),
             f"{second_half_slope(run):+.1f}/s"]
    if not run.workers:
        return [escape(run.label), f"{run.rate:.1f}", vs_bare, during, "—", "—", *queue, "—",
                "info"]
    assert run.drain_s is not None
    after = (run.sent - end.processed) / run.drain_s if run.drain_s > 0 else float("nan")
    limit = SLOPE_TOLERANCE * run.rate
    keeps_up = second_half_slope(run) <= limit
    return [escape(run.label), f"{run.rate:.1f}", vs_bare, during, f"{after:.1f}",
            f"{run.sent / (run.send_s + run.drain_s):.1f}", *queue, f"{run.drain_s:.1f}",
            f"{verdict(keeps_up)} [dim](≤ {limit:.1f}/s)[/]"]


def ingest_table(runs: list[IngestRun], bare: IngestRun, n: int) -> Table:
    table = Table(title=f"Ingest with preprocessing on: {n} × 512² CT, one storescu "
                        "association (TCP_NODELAY=1), one DIMSE process, 2 cores",
                  caption=f"ingest /s: {n} / storescu wall time (same files, same run, every "
                          "row). bare: bench/bare_scp.py, 1 MiB PDU and the node's transport, "
                          "acknowledges and discards. node: `support-node serve "
                          "--processing-workers N`, fresh home, every other default (fsync "
                          "on). processed /s: instances processed during the send / its "
                          f"duration; after the send (drain); overall = {n} / (send + drain). "
                          "Queue: jobs queued or running, read from the index every 0.5 s. "
                          "Target: preprocessing keeps up with ingest on two cores (the queue "
                          "does not grow without bound while storescu sends): PASS when the "
                          "least-squares growth of the queue over the second half of the send "
                          "(= ingest rate − processing rate) is ≤ "
                          f"{SLOPE_TOLERANCE:.0%} of that row's ingest rate. Every node run is "
                          "checked with `support-node status --json` after it stopped: all "
                          f"{n} instances indexed and processed, queue 0 (else FAILED; with no "
                          f"worker: {n} indexed, {n} queued).",
                  title_justify="left", caption_justify="left")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name == "receiver" else "right",
                         no_wrap=name == "receiver")
    for run in [bare, *runs]:
        table.add_row(*ingest_row(run, bare))
    return table


def queue_lines(runs: list[IngestRun]) -> list[str]:
    lines = []
    for run in runs:
        if run.samples and not run.error:
            depths = " ".join(str(s.queue) for s in run.samples if s.t <= run.send_s)
            after = " ".join(str(s.queue) for s in run.samples if s.t > run.send_s)
            lines.append(f"queue every {SAMPLE_S} s, {run.label}: {depths}"
                         + (f" | after the send: {after}" if after else ""))
    return lines


# -- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 100 instances, 10 calls per step")
    parser.add_argument("--instances", type=int, help="512² series sent (default 500)")
    parser.add_argument("--reps", type=int, help="calls per step and size (default 40)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="processing workers per node row (default 0 1 2)")
    args = parser.parse_args(argv)
    args.instances = args.instances or (100 if args.quick else 500)
    args.reps = args.reps or (10 if args.quick else 40)
    if min(args.instances, args.reps) < 1 or min(args.workers) < 0:
        parser.error("--instances and --reps must be at least 1, --workers at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("storescu") is None or shutil.which("echoscu") is None:
        err.print("[red]dcmtk missing (storescu, echoscu): apt-get install dcmtk[/]")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    try:
        costs = measure_costs(args.reps, tmp)
        costs_s = time.perf_counter() - started
        out.print(cost_table(costs))
        out.print()
        series = tmp / "series"
        with err.status(f"generating {args.instances} × 512² CT…"):
            for ds in ct_series(args.instances, 512):
                write(ds, series)
        with progress_bar() as bar:
            bare = measure_bare(series, args.instances, bar)
            runs = [measure_node(w, series, args.instances, bar) for w in args.workers]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out.print(ingest_table(runs, bare, args.instances))
    for line in queue_lines(runs):
        out.print(line, highlight=False)
    failed = [r for r in [bare, *runs] if r.error]
    for run in failed:
        out.print(f"[red]FAILED {escape(run.label)}: {escape(run.error)}[/]")
    out.print(f"total {time.perf_counter() - started:.0f} s (cost table {costs_s:.0f} s); "
              f"load average (1 min) "
              f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on "
              f"{os.cpu_count()} cores (other processes on the machine take from the same "
              "cores)", highlight=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
