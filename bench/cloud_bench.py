"""Ingest with the object store far away: `ack = "spool"` against `ack = "store"`.

`.venv/bin/python bench/cloud_bench.py` (run by `make bench`; ~3 minutes; `--instances N`,
default 200; `--delay-ms D`, default 10 each way). One run:

1. Starts SeaweedFS (`weed mini`, S3 with keys) and a TCP proxy in front of its S3 port that
   delays each direction by D ms (bench/delay_proxy.py, in a process of its own: this kernel
   has no netem), so the store is 2·D ms away, as a cloud region is. Both run at nice 10:
   a store in a cloud region spends none of this machine's CPU, so here its work (and the
   proxy's, ~1–2 ms a MiB) stays behind the node's on the 2 shared cores.
2. Generates N synthetic 512² CT instances, and sends them with dcmtk's `storescu` (one
   association, TCP_NODELAY=1) to a fresh `support-node serve` for each row:
   - the local store (every default): the reference rate;
   - the far S3 store with `ack = "spool"` (the default): acknowledged from the local
     spool, uploaded in the background; the table also gives the time until the store
     holds everything;
   - the far S3 store with `ack = "store"`: acknowledged once the store holds it.
3. Checks each node kept every instance (`support-node ls`), and for the S3 rows that the
   store holds them all once the spool is empty.
4. Reads where the time per instance went from the node's own `/metrics` (the ingest stage
   histogram: parse, encrypt_write, index, and acknowledge, which spans them: from the
   whole data set in hand to the answer), as ms per instance; the rest of the wall time
   per instance is the transfer and pynetdicom's own work.

Targets (issue 14): spool ≥ 0.8× the local-store rate, and ≥ 5× `ack = "store"`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.faults_env import Seaweed  # noqa: E402
from bench.receivers import (  # noqa: E402
    ReceiverError,
    SupportNode,
    clean_env,
    free_port,
    stop_process,
)
from pipelines.synthetic import ct_series, write  # noqa: E402

out = Console(width=None if sys.stdout.isatty() else 150)
STAGES = ("parse", "describe", "encrypt_write", "spool", "index", "acknowledge")


@dataclass
class Row:
    name: str
    sent: int
    wall_s: float = 0.0
    kept: int = 0
    uploaded_after_s: float | None = None  # from the first send to an empty spool
    stages: dict[str, float] = field(default_factory=dict)  # ms per instance
    error: str = ""

    @property
    def rate(self) -> float | None:
        ok = not self.error and self.kept == self.sent and self.wall_s > 0
        return self.sent / self.wall_s if ok else None


def send(files: list[Path], port: int, aet: str) -> float:
    env = clean_env(nodelay=True)
    started = time.perf_counter()
    proc = subprocess.run(["storescu", "-aec", aet, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, env=env,
                          timeout=1800, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise ReceiverError(f"storescu failed: {proc.stderr[-300:]}")
    return wall


def stage_ms(url: str | None, count: int) -> dict[str, float]:
    """ms per instance in each ingest stage, from the node's /metrics."""
    if not url or not count:
        return {}
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    sums: dict[str, float] = {}
    for m in re.finditer(r'support_node_ingest_stage_seconds_sum\{stage="(\w+)"\} (\S+)', text):
        sums[m.group(1)] = sums.get(m.group(1), 0.0) + float(m.group(2))
    return {k: 1000 * v / count for k, v in sums.items()}


def spool_empty(node: SupportNode, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = node.node_cli("status", "--json")
        if status.returncode == 0 and json.loads(status.stdout)["spool"]["objects"] == 0:
            return True
        time.sleep(0.2)
    return False


def measure(name: str, files: list[Path], env: dict[str, str], upload: bool) -> Row:
    row = Row(name, len(files))
    node = SupportNode(env=env | {"SUPPORT_NODE_PROCESSING_WORKERS": "0"})
    try:
        node.start()
        started = time.perf_counter()
        row.wall_s = send(files, node.port, node.aet)
        if upload:
            if not spool_empty(node, 900):
                row.error = "the spool did not empty in 900 s"
            row.uploaded_after_s = time.perf_counter() - started
        row.stages = stage_ms(node.http_url(), len(files))
        row.kept = node.finish()
        if row.kept != row.sent:
            row.error = row.error or f"kept {row.kept} of {row.sent}"
    except (ReceiverError, OSError, subprocess.SubprocessError, ValueError) as exc:
        row.error = f"{type(exc).__name__}: {exc}"
    finally:
        node.close()
    return row


def start_proxy(target_port: int, delay_ms: float) -> tuple[subprocess.Popen[str], int]:
    """bench/delay_proxy.py at nice 10 in front of ``target_port``; (process, its port)."""
    port = free_port()
    proc = subprocess.Popen(
        ["nice", "-n", "10", sys.executable, str(ROOT / "bench" / "delay_proxy.py"),
         "--target", f"127.0.0.1:{target_port}", "--listen", str(port),
         "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "delay proxy on" not in line:
        stop_process(proc)  # type: ignore[arg-type]
        raise ReceiverError(f"the delay proxy did not start: {line!r}")
    return proc, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-cloud-"))
    files = [write(ds, work / "send") for ds in ct_series(args.instances, 512, seed=7)]
    weed = Seaweed(work / "weed", nice=10)
    weed.start()
    proxy, proxy_port = start_proxy(weed.ports["s3"], args.delay_ms)
    far = {k: v.replace(weed.endpoint, f"http://127.0.0.1:{proxy_port}")
           for k, v in weed.node_env("bench").items()}
    rows: list[Row] = []
    try:
        rows.append(measure("local store (defaults)", files, {}, upload=True))
        for ack in ("spool", "store"):
            env = far | {"SUPPORT_NODE_STORE_URL": f"s3://{weed.bucket}/bench-{ack}",
                         "SUPPORT_NODE_STORE_ACK": ack}
            rows.append(measure(f"S3 {2 * args.delay_ms:g} ms away, ack = {ack}", files, env,
                                upload=ack == "spool"))
    finally:
        stop_process(proxy)  # type: ignore[arg-type]
        weed.stop()
    render(rows, args)
    local, spool, store = (r.rate for r in rows)
    met = [local and spool and spool >= 0.8 * local, spool and store and spool >= 5 * store]
    return 0 if all(met) else 1


def render(rows: list[Row], args: argparse.Namespace) -> None:
    table = Table("node", "instances/s (acknowledged)", "ms / instance",
                  "all in the store after", "kept",
                  title=f"Ingest, 512² CT, {args.instances} instances, one association, "
                        "storescu TCP_NODELAY=1", title_justify="left")
    for r in rows:
        rate = f"{r.rate:.1f}" if r.rate else f"FAILED: {r.error}"[:60]
        ms = f"{1000 / r.rate:.1f}" if r.rate else "—"
        up = f"{r.uploaded_after_s:.1f} s" if r.uploaded_after_s is not None else "—"
        table.add_row(r.name, rate, ms, up, f"{r.kept}/{r.sent}")
    out.print(table)
    stages = Table("node", *STAGES, "transfer + pynetdicom", "wall",
                   title="Where the time per instance goes (ms per instance, from the node's "
                   "ingest stage histogram; acknowledge spans parse, encrypt_write and index)",
                   title_justify="left")
    for r in rows:
        wall = 1000 / r.rate if r.rate else None
        rest = wall - r.stages["acknowledge"] if wall and "acknowledge" in r.stages else None
        stages.add_row(r.name, *(f"{r.stages[s]:.2f}" if s in r.stages else "—"
                                 for s in STAGES),
                       f"{rest:.2f}" if rest is not None else "—",
                       f"{wall:.2f}" if wall else "—")
    out.print(stages)
    local, spool, store = (r.rate for r in rows)
    targets = Table("comparison", "ratio", "target", "result", title="Targets",
                    title_justify="left")
    for name, a, b, goal in (("spool far / local store", spool, local, 0.8),
                             ("spool far / store far", spool, store, 5.0)):
        ratio = a / b if a and b else None
        targets.add_row(name, f"{ratio:.2f}" if ratio else "—", f"≥ {goal:g}",
                        "—" if ratio is None else ("[green]MET[/]" if ratio >= goal
                                                   else "[red]MISSED[/]"))
    out.print(targets)


if __name__ == "__main__":
    raise SystemExit(main())
