"""DICOMweb beside DIMSE on the same node and the same 512² CT files: a table.

    .venv/bin/python bench/web_bench.py [--instances 200] [--size 512]

Rows: C-STORE (dcmtk storescu, one association) as the baseline measured in the same run;
STOW-RS with 1 and 4 clients (one instance per request, as a modality bridge would send);
WADO-RS instance and frame retrieval (rate and median / p95 latency); QIDO-RS at the study
level (p95); series metadata of the whole series. Each figure is a whole-run rate or a
latency from this process's clock; the node runs in this process on loopback.

Not here yet: the same rows against Orthanc with its DICOMweb plugin (Debian ``orthanc`` and
``orthanc-dicomweb``), and QIDO at 100k instances (``bench/query_bench.py`` measures the
engine itself at that size through C-FIND).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from node import wiring  # noqa: E402
from node.api import Node  # noqa: E402
from node.settings import load  # noqa: E402
from pipelines import synthetic  # noqa: E402

console = Console()


def start(home: Path) -> tuple[Node, object, object]:
    settings = load(home=home, environ={}, overrides={"dimse": {"port": 0},
                                                      "http": {"port": 0}})
    node = Node.from_settings(settings, create_keys=True)
    return node, wiring.start_dimse(node.core), wiring.start_web(node.core, port=0)


def stow_one(url: str, data: bytes) -> float:
    boundary = "benchboundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    started = time.perf_counter()
    r = requests.post(url + "/studies", data=body, timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    r.raise_for_status()
    return time.perf_counter() - started


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


def _spread(lat: list[float]) -> str:
    return f"median {statistics.median(lat) * 1000:.1f} ms, p95 {p95(lat) * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="web-bench-"))
    rows: list[tuple[str, str, str]] = []
    try:
        files = [synthetic.write(ds, work / "a")
                 for ds in synthetic.ct_series(args.instances, size=args.size, seed=1)]
        # a second copy with other UIDs for STOW (so nothing is a duplicate)
        stow_files = [synthetic.write(ds, work / "b")
                      for ds in synthetic.ct_series(args.instances, size=args.size, seed=2)]
        stow4_files = [synthetic.write(ds, work / "c")
                       for ds in synthetic.ct_series(args.instances, size=args.size, seed=3)]
        node, scp, web = start(work / "home")
        try:
            n = args.instances
            if shutil.which("storescu"):
                env = {**os.environ, "TCP_NODELAY": "1"}
                started = time.perf_counter()
                subprocess.run(["storescu", "-aec", "SUPPORT_NODE", "127.0.0.1",
                                str(scp.server_address[1]), *map(str, files)],  # type: ignore[attr-defined]
                               check=True, env=env, capture_output=True)
                rate = n / (time.perf_counter() - started)
                rows.append(("C-STORE, storescu, 1 association (baseline)", f"{rate:.0f}/s",
                             "1.00"))
                base = rate
            else:
                base = 0.0
                rows.append(("C-STORE (storescu missing)", "-", "-"))
            url = web.url  # type: ignore[attr-defined]
            datas = [p.read_bytes() for p in stow_files]
            started = time.perf_counter()
            lat = [stow_one(url, d) for d in datas]
            rate = n / (time.perf_counter() - started)
            rows.append(("STOW-RS, 1 client", f"{rate:.0f}/s (p95 {p95(lat)*1000:.0f} ms)",
                         f"{rate / base:.2f}" if base else "-"))
            datas = [p.read_bytes() for p in stow4_files]
            started = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda d: stow_one(url, d), datas))
            rate = n / (time.perf_counter() - started)
            rows.append(("STOW-RS, 4 clients", f"{rate:.0f}/s",
                         f"{rate / base:.2f}" if base else "-"))
            recs = list(node.ls())
            sample = recs[: min(100, len(recs))]
            star = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
            lat = []
            for r in sample:
                t = time.perf_counter()
                requests.get(f"{url}/studies/{r.study_uid}/series/{r.series_uid}/instances/"
                             f"{r.sop_uid}", headers=star, timeout=30).raise_for_status()
                lat.append(time.perf_counter() - t)
            rows.append(("WADO-RS instance", f"{len(lat) / sum(lat):.0f}/s", _spread(lat)))
            lat = []
            for r in sample:
                t = time.perf_counter()
                requests.get(f"{url}/studies/{r.study_uid}/series/{r.series_uid}/instances/"
                             f"{r.sop_uid}/frames/1", timeout=30, headers={
                                 "Accept": "multipart/related; type=application/octet-stream;"
                                           " transfer-syntax=*"}).raise_for_status()
                lat.append(time.perf_counter() - t)
            rows.append(("WADO-RS frame", f"{len(lat) / sum(lat):.0f}/s", _spread(lat)))
            lat = []
            for _ in range(50):
                t = time.perf_counter()
                requests.get(f"{url}/studies", params={"PatientName": "doe*"},
                             timeout=30).raise_for_status()
                lat.append(time.perf_counter() - t)
            rows.append(("QIDO-RS studies, name wildcard", f"p95 {p95(lat)*1000:.1f} ms",
                         f"{len(recs)} instances indexed"))
            r = recs[0]
            t = time.perf_counter()
            meta = requests.get(f"{url}/studies/{r.study_uid}/series/{r.series_uid}/metadata",
                                timeout=60).json()
            rows.append((f"series metadata ({len(meta)} instances)",
                         f"{(time.perf_counter() - t)*1000:.0f} ms", ""))
        finally:
            web.shutdown()  # type: ignore[attr-defined]
            scp.shutdown()  # type: ignore[attr-defined]
            node.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"DICOMweb beside DIMSE ({args.instances} CT instances, "
                        f"{args.size}², loopback)")
    for column in ("path", "figure", "ratio / note"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
