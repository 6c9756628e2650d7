"""Memory while the node receives one large instance, and while a worker processes it.

    .venv/bin/python bench/memory_bench.py [--mib 200]

Starts ``support-node serve`` (defaults, a temporary home, free ports), sends one plain
CT instance of about ``--mib`` MiB with dcmtk's ``storescu``, and samples the resident
memory (VmRSS) of every process of the node every 20 ms. Prints, per process, its memory
before, its peak, and the growth as a multiple of the instance's size. The issue's target:
growth of the receiving process at most 1.2x the instance. Whole-process figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import receivers  # noqa: E402
from pipelines import synthetic  # noqa: E402

console = Console(width=120)
MIB = 1 << 20


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree(pid: int) -> dict[int, str]:
    """The node's processes: pid -> its command line, shortened."""
    out = {pid: "serve (main)"}
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent in out and int(child.name) not in out:
            cmd = (child / "cmdline").read_bytes().replace(b"\0", b" ").decode()[-60:]
            out[int(child.name)] = cmd
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    ds = synthetic.ct_study(synthetic.Patient("MEM-1", "Memory^Bench"), series=1,
                            per_series=1, size=512, seed=1)[0]
    frames = max(1, args.mib * MIB // (512 * 512 * 2))
    ds.NumberOfFrames = frames
    ds.PixelData = (bytes(range(256)) * (512 * 512 * 2 * frames // 256))
    path = synthetic.write(ds, work / "src")
    size = path.stat().st_size
    dimse, http = receivers.free_port(), receivers.free_port()
    env = receivers.node_env()
    proc = subprocess.Popen([*receivers.NODE_CLI, "serve", "--init", "--home", str(work / "home"),
                             "--dimse-port", str(dimse), "--http-port", str(http)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            echo = subprocess.run(["echoscu", "127.0.0.1", str(dimse)], capture_output=True,
                                  check=False)
            if echo.returncode == 0:
                break
            time.sleep(0.5)
        time.sleep(2)
        names = tree(proc.pid)
        before = {pid: rss(pid) for pid in names}
        peak = dict(before)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for pid in list(names):
                    peak[pid] = max(peak[pid], rss(pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        sent = subprocess.run(["storescu", "-aec", "SUPPORT_NODE", "127.0.0.1", str(dimse),
                               str(path)], capture_output=True, text=True, check=False,
                              env={**env, "TCP_NODELAY": "1"})
        stored_in = time.perf_counter() - started
        time.sleep(20)  # the worker decodes and preprocesses it
        done.set()
        sampler.join()
    finally:
        proc.terminate()
        proc.wait(30)
    table = Table(title=f"One {size / MIB:.0f} MiB instance: memory of the node's processes")
    for column in ("process", "before", "peak", "growth", "growth / instance"):
        table.add_column(column, justify="left" if column == "process" else "right")
    for pid, name in names.items():
        growth = peak[pid] - before[pid]
        table.add_row(name, f"{before[pid] / MIB:.0f} MiB", f"{peak[pid] / MIB:.0f} MiB",
                      f"{growth / MIB:.0f} MiB", f"{growth / size:.2f}x")
    console.print(table)
    console.print(f"storescu: {'stored' if sent.returncode == 0 else 'FAILED'} in "
                  f"{stored_in:.1f} s. Target: the receiving process grows by at most 1.2x "
                  "the instance.")
    return 0 if sent.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
