"""C-MOVE rate of a 500-instance 512×512 CT series beside storescu's rate, in the same run.

``.venv/bin/python bench/retrieve_bench.py`` generates the series (``pipelines/synthetic.py``),
imports it into a fresh node home, runs ``support-node serve`` (this checkout, port from the
OS) with ``[destinations.DEST]`` pointing at a dcmtk ``storescp``, and times ``movescu``
(series level) until every instance arrived; then times ``storescu`` sending the same files
from disk to a fresh ``storescp``. Runs are interleaved; the table shows medians. C-GET
(``getscu``) is timed once, for information. Every dcmtk tool runs with TCP_NODELAY=1, and
both storescp get ``+B`` (bit-preserving), so moved data sets can be compared byte for byte
with the originals. The node runs without processing workers (the imported series would
otherwise be preprocessed during the moves). Target (issue 14): C-MOVE >= 0.5 × storescu's
rate. ``--quick``: 100 instances, one run.

Also printed: where an instance's time goes in the node before the network, in this process:
read + decrypt (streaming, as the read-ahead thread does), the file-meta parse that is all a
move parses now, and what the path before read-ahead also paid on the association's thread
(whole-data-set dcmread and pynetdicom's re-encode). Before read-ahead (commit f127440's
node, 2 cores, lightly loaded): C-MOVE 150.6/s against storescu 1283/s, 0.12×.
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.filereader import read_file_meta_info
from pynetdicom.dsutils import encode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.receivers import (  # noqa: E402
    NODE_CLI,
    DcmtkStorescp,
    ReceiverError,
    clean_env,
    node_env,
    stop_process,
)
from node.api import Node  # noqa: E402
from node.dimse.encoded import StoredDataset  # noqa: E402
from node.layout import ORIGINAL  # noqa: E402
from node.settings import load  # noqa: E402
from pipelines.synthetic import ct_series, write  # noqa: E402

TARGET = 0.50
DEST = "DEST"
READY = re.compile(r"ready:\s+DIMSE\s+on\s+\S+?:(\d+)")


class Destination(DcmtkStorescp):
    """storescp under the AE title DEST, bit-preserving (data sets written as received)."""

    aet = DEST

    def command(self) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().command()
        return [*cmd[:-1], "+B", cmd[-1]], env

    def files(self) -> list[Path]:
        return sorted(p for p in (self.dir / "files").iterdir() if p.is_file())

    def clear(self) -> None:
        for path in self.files():
            path.unlink()


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part-10 file after its file meta (whose first element is the group
    length (0002,0000), as PS3.10 requires)."""
    data = path.read_bytes()
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{path}: no preamble or no meta group length")
    return data[144 + int.from_bytes(data[140:144], "little"):]


class ServedNode:
    """``support-node serve --dimse-port 0`` on ``home`` with ``config``; the port is read from
    its ready line."""

    def __init__(self, home: Path, config: Path) -> None:
        self.log = home.parent / "serve.log"
        env = node_env() | {"COLUMNS": "500"}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [*NODE_CLI, "serve", "--home", str(home), "--config", str(config),
                 "--dimse-port", "0", "--http-port", "0", "--processing-workers", "0"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = READY.search(self.log.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        stop_process(self.proc)
        raise ReceiverError(f"support-node serve did not start: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-800:]

    def stop(self) -> None:
        stop_process(self.proc)


def wait_count(count: Callable[[], int], n: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    got = count()
    while got < n and time.monotonic() < deadline:
        time.sleep(0.02)
        got = count()
    return got


def run_tool(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(nodelay=True),
                         check=False, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {res.returncode}: {res.stderr[-600:]}")


def time_move(node: ServedNode, aet: str, dest: Destination, keys: list[str], n: int) -> float:
    dest.clear()
    start = time.perf_counter()
    run_tool(["movescu", "-S", "-aet", "BENCH", "-aec", aet, "-aem", DEST, *keys,
              "127.0.0.1", str(node.port)])
    got = wait_count(lambda: len(dest.files()), n)
    wall = time.perf_counter() - start
    if got != n:
        raise RuntimeError(f"C-MOVE: {got} of {n} instances arrived; node log: {node.tail()}")
    return n / wall


def time_storescu(folder: Path, n: int) -> float:
    dest = Destination()
    try:
        dest.start()
        start = time.perf_counter()
        run_tool(["storescu", "-aet", "BENCH", "-aec", DEST, "127.0.0.1", str(dest.port),
                  "+sd", str(folder)])
        got = wait_count(lambda: len(dest.files()), n)
        wall = time.perf_counter() - start
        if got != n:
            raise RuntimeError(f"storescu: {got} of {n} instances arrived")
        return n / wall
    finally:
        dest.close()


def time_get(node: ServedNode, aet: str, keys: list[str], out: Path, n: int) -> float:
    out.mkdir()
    start = time.perf_counter()
    run_tool(["getscu", "-S", "-aet", "BENCH", "-aec", aet, *keys, "-od", str(out),
              "127.0.0.1", str(node.port)])
    wall = time.perf_counter() - start
    got = sum(1 for p in out.iterdir() if p.is_file())
    if got != n:
        raise RuntimeError(f"C-GET: {got} of {n} instances arrived")
    return n / wall


def identical(received: list[Path], originals: Path, sample: int = 5) -> tuple[int, int]:
    """(identical, compared) over the first ``sample`` received files and their originals."""
    same = 0
    picked = received[:: max(1, len(received) // sample)][:sample]
    for path in picked:
        sop = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
        same += dataset_bytes(path) == dataset_bytes(originals / f"{sop}.dcm")
    return same, len(picked)


def read_costs(home: Path, config: Path, keys: list[str]) -> dict[str, float]:
    """ms per instance, in this process, over the given objects: what the read-ahead thread
    does for each move sub-operation (read + decrypt through ``fs.open``, parse the file meta
    only), and what the path before it also did (dcmread the whole instance, encode it again
    as pynetdicom does)."""
    node = Node.open(home=home, config=config)
    totals = dict.fromkeys(("read", "meta", "dcmread", "encode"), 0.0)
    try:
        fs = node.core.fs
        for key in keys:
            t0 = time.perf_counter()
            with fs.open(f"{key}/{ORIGINAL}", "rb") as fh:
                data = fh.read()
            t1 = time.perf_counter()
            StoredDataset.parse(data, "", "")
            t2 = time.perf_counter()
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            t3 = time.perf_counter()
            encode(ds, False, True)
            t4 = time.perf_counter()
            for name, spent in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                totals[name] += spent
    finally:
        node.close()
    return {name: 1000 * spent / len(keys) for name, spent in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 instances, one run")
    args = parser.parse_args(argv)
    n, reps = (100, 1) if args.quick else (args.instances, args.reps)
    tmp = Path(tempfile.mkdtemp(prefix="bench-retrieve-"))
    dest: Destination | None = None
    node: ServedNode | None = None
    try:
        t0 = time.perf_counter()
        series = tmp / "series"
        object_keys: list[str] = []
        first = None
        for ds in ct_series(n, size=512):
            first = first or ds
            write(ds, series)
        assert first is not None
        dest = Destination()
        dest.start()
        config = tmp / "node.toml"
        config.write_text(f'[destinations.{DEST}]\nhost = "127.0.0.1"\nport = {dest.port}\n')
        home = tmp / "home"
        with Node.from_settings(load(config=config, home=home), create_keys=True) as writer:
            for path in sorted(series.iterdir()):
                object_keys.append(writer.write(path.read_bytes(), via="import").object_key)
        aet = load(config=config, home=home, environ={}).dimse.ae_title
        print(f"{n} instances of 512×512 CT generated and imported in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        node = ServedNode(home, config)
        keys = ["-k", "QueryRetrieveLevel=SERIES",
                "-k", f"StudyInstanceUID={first.StudyInstanceUID}",
                "-k", f"SeriesInstanceUID={first.SeriesInstanceUID}"]
        moves: list[float] = []
        sends: list[float] = []
        same = compared = 0
        for rep in range(reps):
            moves.append(time_move(node, aet, dest, keys, n))
            if rep == 0:
                same, compared = identical(dest.files(), series)
            sends.append(time_storescu(series, n))
            print(f"  run {rep + 1}: C-MOVE {moves[-1]:.1f}/s, storescu {sends[-1]:.1f}/s",
                  flush=True)
        get_rate = time_get(node, aet, keys, tmp / "got", n)
        node.stop()
        costs = read_costs(home, config, object_keys[:50])
    finally:
        if node is not None:
            node.stop()
        if dest is not None:
            dest.close()
        shutil.rmtree(tmp, ignore_errors=True)

    move, send = statistics.median(moves), statistics.median(sends)
    ratio = move / send
    runs = lambda rates: ", ".join(f"{r:.1f}" for r in rates)  # noqa: E731
    print(f"\nRetrieve rate, {n} × 512×512 CT (explicit VR LE), loopback, median of {reps}")
    print(f"  {'path':<46} {'instances/s':>11}  runs")
    print(f"  {'C-MOVE support-node -> storescp (movescu -S)':<46} {move:>11.1f}  [{runs(moves)}]")
    print(f"  {'storescu from disk -> storescp':<46} {send:>11.1f}  [{runs(sends)}]")
    print(f"  {'C-GET support-node -> getscu (info)':<46} {get_rate:>11.1f}  [{get_rate:.1f}]")
    print(f"  C-MOVE / storescu = {ratio:.2f}  target >= {TARGET:.2f}: "
          f"{'PASS' if ratio >= TARGET else 'MISS'}")
    print(f"  moved data sets byte-identical to the originals: {same}/{compared}")
    print("\n  Per instance (ms)                                        ")
    print(f"  {'C-MOVE wall / storescu wall':<46} {1000 / move:>6.2f} / {1000 / send:.2f}")
    print(f"  {'read-ahead thread: read + decrypt (fs.open)':<46} {costs['read']:>6.2f}")
    print(f"  {'read-ahead thread: parse the file meta':<46} {costs['meta']:>6.2f}")
    print(f"  {'no longer paid: dcmread of the instance':<46} {costs['dcmread']:>6.2f}")
    print(f"  {'no longer paid: pynetdicom re-encode':<46} {costs['encode']:>6.2f}")
    print("  (the reader's work overlaps the send of the instance before; the rest of the "
          "C-MOVE wall is pynetdicom's C-STORE exchange and the pending C-MOVE responses)")
    return 0 if same == compared else 1


if __name__ == "__main__":
    raise SystemExit(main())
