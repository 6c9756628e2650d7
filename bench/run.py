"""Ingest benchmark: dcmtk ``storescu`` into support-node, beside the baselines, in one run.

    .venv/bin/python bench/run.py [--quick] [--instances N] [--sweep-instances M] [--reps R]

Generates synthetic CT series, sends them with ``storescu`` (one association, and four at once)
to support-node and to a bare pynetdicom SCP, dcmtk's ``storescp`` and Orthanc, with and without
``TCP_NODELAY=1`` in the sender's environment, checks that every receiver really kept what was
sent, and prints the tables (also written as JSON under bench/out/). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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

from bench.receivers import (  # noqa: E402
    BarePynetdicom,
    DcmtkStorescp,
    Orthanc,
    Receiver,
    ReceiverError,
    SupportNode,
    clean_env,
    ensure_orthanc,
    stop_process,
    versions,
)
from pipelines.synthetic import ct_series, write  # noqa: E402

MIB = 1024 * 1024
PAPER_MS = {128: 72.0, 256: 118.0, 512: 153.0, 1024: 235.0}  # the paper's Table 1
SEND_TIMEOUT = 600.0
ASSOCIATIONS = 4

RECEIVERS: dict[str, tuple[str, Callable[[], Receiver]]] = {
    "node": ("support-node, defaults (spool, a receiver per core)", SupportNode),
    "node-1w": ("support-node, one receiving process", lambda: SupportNode(workers=1)),
    "bare": ("pynetdicom bare SCP, defaults (16 KiB PDU)", BarePynetdicom),
    "bare-1m": ("pynetdicom bare SCP, 1 MiB PDU", lambda: BarePynetdicom(MIB)),
    "bare-1m-tuned": ("pynetdicom bare SCP, 1 MiB PDU + node's transport",
                      lambda: BarePynetdicom(MIB, tuned=True)),
    "dcmtk": ("dcmtk storescp, writing files (TCP_NODELAY=1)", DcmtkStorescp),
    "orthanc": ("Orthanc, defaults, fsync on (TCP_NODELAY=1)", Orthanc),
    # Receivers as started without dcmtk's switch (Orthanc's Debian service): 128² table only.
    "dcmtk-env": ("dcmtk storescp (TCP_NODELAY unset)", lambda: DcmtkStorescp(nodelay=False)),
    "orthanc-env": ("Orthanc as apt's service runs it (TCP_NODELAY unset)",
                    lambda: Orthanc(nodelay=False)),
}
MAIN = ["node", "node-1w", "bare", "bare-1m", "bare-1m-tuned", "dcmtk", "orthanc"]
SMALL = ["node", "bare", "bare-1m", "bare-1m-tuned", "dcmtk", "dcmtk-env", "orthanc",
         "orthanc-env"]

out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)


@dataclass(frozen=True)
class Case:
    receiver: str
    size: int
    assocs: int
    nodelay: bool

    @property
    def label(self) -> str:
        mode = "TCP_NODELAY=1" if self.nodelay else "Nagle on"
        return f"{self.receiver} {self.size}² ×{self.assocs} {mode}"


@dataclass
class Run:
    sent: int
    wall_s: float = 0.0
    stored: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.stored == self.sent

    @property
    def rate(self) -> float:
        return self.sent / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class Result:
    case: Case
    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    @property
    def rate(self) -> float | None:
        """Median instances/s over the repetitions; None unless every one stored everything."""
        return statistics.median(r.rate for r in self.runs) if self.ok else None

    def cell(self) -> str:
        if not self.runs:
            return "not run"
        if not self.ok:
            bad = next(r for r in self.runs if not r.ok)
            why = bad.error or f"kept {bad.stored} of {bad.sent}"
            return escape(f"FAILED: {why}"[:60])
        text = f"{self.rate:.1f}"
        if len(self.runs) > 1:
            text += " [dim](" + ", ".join(f"{r.rate:.0f}" for r in self.runs) + ")[/]"
        return text


# -- data --------------------------------------------------------------------------------------

def generate(root: Path, size: int, n: int) -> list[Path]:
    """``n`` CT slices of ``size``² in ASSOCIATIONS folders (round robin), one series."""
    folders = [root / f"{size}" / f"part{i}" for i in range(ASSOCIATIONS)]
    for i, ds in enumerate(ct_series(n, size)):
        write(ds, folders[i % ASSOCIATIONS])
    return folders


def count_files(folders: list[Path]) -> int:
    return sum(1 for f in folders for p in f.iterdir() if p.is_file())


# -- one measurement ---------------------------------------------------------------------------

def send(folders: list[Path], port: int, aet: str, assocs: int, nodelay: bool,
         logdir: Path) -> float:
    """Runs ``assocs`` storescu processes at once over ``folders``; returns the wall time."""
    env = clean_env()
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    groups = [folders] if assocs == 1 else [folders[i::assocs] for i in range(assocs)]
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        start = time.perf_counter()
        for i, group in enumerate(groups):
            log = (logdir / f"storescu{i}.log").open("wb")
            logs.append(log)
            cmd = ["storescu", "-aet", "BENCH", "-aec", aet, "+sd", "127.0.0.1", str(port),
                   *map(str, group)]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          stdin=subprocess.DEVNULL))
        for proc in procs:
            proc.wait(max(1.0, SEND_TIMEOUT - (time.perf_counter() - start)))
        wall = time.perf_counter() - start
    finally:
        for proc in procs:
            stop_process(proc, grace=2)
        for log in logs:
            log.close()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        tail = (logdir / f"storescu{failed[0]}.log").read_text(errors="replace")[-300:]
        raise ReceiverError(f"storescu exited {procs[failed[0]].returncode}: {tail}")
    return wall


def measure(case: Case, folders: list[Path], sent: int) -> Run:
    run = Run(sent=sent)
    rx = RECEIVERS[case.receiver][1]()
    try:
        rx.start()
        run.wall_s = send(folders, rx.port, rx.aet, case.assocs, case.nodelay, rx.dir)
        run.stored = rx.finish()
        if run.stored != sent:
            run.error = f"kept {run.stored} of {sent}; {rx.log_tail(200)}"
    except (ReceiverError, OSError, subprocess.SubprocessError, ValueError) as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        rx.close()
    return run


# -- tables ------------------------------------------------------------------------------------

@dataclass
class TableData:
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""

    def render(self) -> Table:
        table = Table(*self.columns, title=self.title, caption=self.caption,
                      title_justify="left", caption_justify="left")
        for row in self.rows:
            table.add_row(*row)
        return table


def verdict(ok: bool) -> str:
    return "[bold green]PASS[/]" if ok else "[bold red]MISS[/]"


def build_tables(results: dict[Case, Result], args: argparse.Namespace,
                 skipped: dict[str, str]) -> list[TableData]:
    def res(receiver: str, size: int, assocs: int, nodelay: bool) -> Result | None:
        return results.get(Case(receiver, size, assocs, nodelay))

    def cell(receiver: str, size: int, assocs: int, nodelay: bool) -> str:
        if receiver in skipped:
            return skipped[receiver]
        r = res(receiver, size, assocs, nodelay)
        return r.cell() if r else "—"

    def rate(receiver: str, size: int, assocs: int, nodelay: bool) -> float | None:
        r = res(receiver, size, assocs, nodelay)
        return r.rate if r else None

    modes = [(1, True, "1 assoc, TCP_NODELAY=1"), (1, False, "1 assoc, Nagle on"),
             (ASSOCIATIONS, True, f"{ASSOCIATIONS} assocs, TCP_NODELAY=1")]
    reps = f"median of {args.reps}" if args.reps > 1 else "one run"
    main = TableData(
        f"Ingest rate, 512×512 CT, {args.instances} instances (instances/s, {reps})",
        ["receiver", *(m[2] for m in modes)],
        [[RECEIVERS[k][0], *(cell(k, 512, a, nd) for a, nd, _ in modes)] for k in MAIN],
        "Wall time from the first storescu start to the last exit; every run checked against "
        "what the receiver kept. Orthanc and dcmtk storescp serve four associations their own way "
        "(storescp: one at a time).")
    small = TableData(
        f"Ingest rate, 128×128 CT, {args.sweep_instances} instances, one association "
        f"(instances/s, {reps})",
        ["receiver", "TCP_NODELAY=1", "Nagle on"],
        [[RECEIVERS[k][0], cell(k, 128, 1, True), cell(k, 128, 1, False)] for k in SMALL],
        "Columns: the sender's TCP_NODELAY. Nagle on is what real PACS senders do: a receiver "
        "that does not re-arm TCP_QUICKACK makes each small instance wait for a delayed ACK "
        "(~40 ms). dcmtk-based receivers also need TCP_NODELAY=1 in their own environment, or "
        "their responses wait the same way.")
    sweep_rows = []
    for size in sorted(PAPER_MS):
        n = args.instances if size == 512 else args.sweep_instances
        r = rate("node", size, 1, True)
        ms = 1000.0 / r if r else None
        sweep_rows.append([f"{size}×{size}", str(n), f"{size * size * 2 / MIB:.2f} MiB",
                           f"{r:.1f}" if r else cell("node", size, 1, True),
                           f"{ms:.1f}" if ms else "—", f"{PAPER_MS[size]:.0f}",
                           f"{PAPER_MS[size] / ms:.1f}× faster" if ms else "—"])
    sweep = TableData(
        "Per-instance store time through support-node (one association, TCP_NODELAY=1)",
        ["size", "instances", "pixel data", "instances/s", "ms / instance",
         "paper Table 1 ms", "vs paper"], sweep_rows,
        "ms / instance = wall time / instances: receive, parse, encrypt, fsync, index, "
        "acknowledge.")

    target_rows: list[list[str]] = []

    def ratio_row(name: str, ref: str, size: int, assocs: int, nodelay: bool,
                  target: float | None, strictly: bool = False) -> None:
        mode = f"{size}², {assocs} assoc{'s' if assocs > 1 else ''}, " + (
            "TCP_NODELAY=1" if nodelay else "Nagle on")
        node_rate, ref_rate = rate("node", size, assocs, nodelay), rate(ref, size, assocs, nodelay)
        if ref in skipped:
            target_rows.append([name, mode, "—", "—", "—", "—", skipped[ref]])
            return
        if node_rate is None or ref_rate is None:
            target_rows.append([name, mode, "—", "—", "—", "—", "missing measurement"])
            return
        ratio = node_rate / ref_rate
        if target is None:
            goal, mark = "info", ""
        else:
            goal = f"> {target:.2f}" if strictly else f"≥ {target:.2f}"
            mark = verdict(ratio > target if strictly else ratio >= target)
        target_rows.append([name, mode, f"{node_rate:.1f}", f"{ref_rate:.1f}", f"{ratio:.2f}",
                            goal, mark])

    for a, nd, _ in modes:
        ratio_row("node / bare pynetdicom, same PDU (1 MiB)", "bare-1m", 512, a, nd,
                  0.6 if a == 1 else None)
    for a, nd, _ in modes:
        ratio_row("node / bare pynetdicom, 1 MiB + node transport", "bare-1m-tuned", 512, a, nd,
                  None)
    for a, nd, _ in modes:
        ratio_row("node / bare pynetdicom, defaults", "bare", 512, a, nd, None)
    ratio_row("node / Orthanc", "orthanc", 512, 1, True, 0.8)
    ratio_row("node / Orthanc", "orthanc", 512, 1, False, 0.8)
    ratio_row("node / Orthanc", "orthanc", 512, ASSOCIATIONS, True, 1.0)
    for nd in (True, False):
        ratio_row("node / Orthanc as apt runs it (TCP_NODELAY unset)", "orthanc-env", 128, 1,
                  nd, 1.0, strictly=True)
    for a, nd, _ in modes:
        ratio_row("node / dcmtk storescp", "dcmtk", 512, a, nd, None)
    for nd in (True, False):
        ratio_row("node / bare pynetdicom, same PDU (1 MiB)", "bare-1m", 128, 1, nd, None)
    targets = TableData(
        "Ratios and targets (one association: ≥ 0.6 of bare pynetdicom with the same PDU and "
        "≥ 0.8 of Orthanc; four associations: ≥ 1.0 of Orthanc)",
        ["comparison", "workload", "node /s", "reference /s", "ratio", "target", "result"],
        target_rows)
    return [main, small, sweep, targets]


def plain(text: str) -> str:
    """A table cell without rich markup, for the JSON record."""
    from rich.text import Text

    return Text.from_markup(text).plain


# -- main --------------------------------------------------------------------------------------

def plan(args: argparse.Namespace, skipped: dict[str, str]) -> list[Case]:
    cases = []
    for key in MAIN:
        if key not in skipped:
            cases += [Case(key, 512, 1, True), Case(key, 512, 1, False),
                      Case(key, 512, ASSOCIATIONS, True)]
    for key in SMALL:
        if key not in skipped:
            cases += [Case(key, 128, 1, True), Case(key, 128, 1, False)]
    cases += [Case("node", 256, 1, True), Case("node", 1024, 1, True)]
    return cases


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="support-node ingest benchmark")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (~1 min): 60 instances, 30 per size, one repetition")
    parser.add_argument("--instances", type=int, help="512×512 instances (default 500)")
    parser.add_argument("--sweep-instances", type=int,
                        help="instances per 128/256/1024 set (default 200)")
    parser.add_argument("--reps", type=int, help="repetitions per measurement (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                        help="folder for the JSON record")
    args = parser.parse_args(argv)
    args.instances = args.instances or (60 if args.quick else 500)
    args.sweep_instances = args.sweep_instances or (30 if args.quick else 200)
    args.reps = args.reps or (1 if args.quick else 2)
    if min(args.instances, args.sweep_instances, args.reps) < 1:
        parser.error("--instances, --sweep-instances and --reps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [t for t in ("storescu", "echoscu", "storescp") if shutil.which(t) is None]
    if missing:
        err.print(f"[red]dcmtk missing ({', '.join(missing)}): apt-get install dcmtk[/]")
        return 2
    skipped: dict[str, str] = {}
    notes: list[str] = []
    orthanc, note = ensure_orthanc()
    if orthanc is None:
        skipped["orthanc"] = skipped["orthanc-env"] = note
    if note:
        notes.append(note)
    started = datetime.now(UTC)
    data = Path(tempfile.mkdtemp(prefix="bench-data-"))
    results: dict[Case, Result] = {}
    try:
        sizes = {512: args.instances, **{s: args.sweep_instances for s in (128, 256, 1024)}}
        sets: dict[int, list[Path]] = {}
        with err.status("generating synthetic CT series…"):
            for size, n in sizes.items():
                sets[size] = generate(data, size, n)
                assert count_files(sets[size]) == n
        cases = plan(args, skipped)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=err)
        with progress:
            task = progress.add_task("measuring", total=len(cases) * args.reps)
            for rep in range(args.reps):
                for case in cases:
                    progress.update(task, description=f"rep {rep + 1}: {case.label}")
                    run = measure(case, sets[case.size], sizes[case.size])
                    results.setdefault(case, Result(case)).runs.append(run)
                    if not run.ok:
                        err.print(f"[yellow]{case.label}: {run.error}[/]")
                    progress.advance(task)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    tables = build_tables(results, args, skipped)
    for table in tables:
        out.print(table.render())
        out.print()
    for line in notes:
        out.print(f"note: {line}")
    record = {
        "started": started.isoformat(),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "versions": versions(),
        "notes": notes,
        "tables": [{"title": t.title, "columns": t.columns, "caption": t.caption,
                    "rows": [[plain(c) for c in row] for row in t.rows]} for t in tables],
        "runs": [{**asdict(r.case), "median_rate": r.rate,
                  "runs": [asdict(x) | {"rate": x.rate, "ok": x.ok} for x in r.runs]}
                 for r in results.values()],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{started:%Y%m%d-%H%M%S}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(record, indent=2))
    (args.out / "latest.json").write_text(json.dumps(record, indent=2))
    out.print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    failed = [r.case.label for r in results.values() if not r.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
