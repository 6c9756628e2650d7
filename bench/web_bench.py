"""DICOMweb and DIMSE on the node beside Orthanc with its DICOMweb plugin, on the same files.

    .venv/bin/python bench/web_bench.py [--instances 500] [--size 512] [--quick]

Both servers run as their own processes on loopback ports the OS gave, with default
settings (the node: ``support-node serve``, one processing worker at low priority; Orthanc:
Debian's ``orthanc`` + ``orthanc-dicomweb``, installed when missing and allowed). For each,
on three copies of one generated CT series (other UIDs each, so nothing is a duplicate):

* C-STORE with dcmtk's ``storescu`` (one association, TCP_NODELAY=1): the baseline;
* STOW-RS with 1 and 4 clients, one instance per request;
* WADO-RS: 100 instances (``transfer-syntax=*``) and 100 first frames, one at a time;
* QIDO-RS at the study level (a name wildcard), p95 of 50;
* the series' metadata (the whole series, one request).

Then QIDO-RS on the node with 100,000 instances in the index (filled by bulk inserts as
``bench/query_bench.py`` does; Orthanc is not filled to that size here): a study-level
name wildcard that matches 20 studies, target p95 <= 20 ms.

The table gives each figure and node / Orthanc (higher is better for rates, lower for
latencies: the ratio is written so that >= 1.00 means the node is at least as good).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import receivers  # noqa: E402
from pipelines import synthetic  # noqa: E402

console = Console()
STAR = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
FRAME = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class NodeServer(receivers.Receiver):
    """``support-node serve`` on free DIMSE and HTTP ports, defaults otherwise."""

    name = "support-node"
    aet = "SUPPORT_NODE"

    def __init__(self) -> None:
        super().__init__()
        self.http_port = receivers.free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def command(self) -> tuple[list[str], dict[str, str]]:
        home = self.dir / "home"
        return [*receivers.NODE_CLI, "serve", "--init", "--home", str(home), "--dimse-port",
                str(self.port), "--http-port", str(self.http_port)], receivers.node_env()


class OrthancWeb(receivers.Orthanc):
    """Orthanc with its DICOMweb plugin at ``/dicom-web``."""

    name = "Orthanc + DICOMweb"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def command(self) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().command()
        path = Path(cmd[-1])
        config = json.loads(path.read_text())
        config["Plugins"] = [DICOMWEB_PLUGIN]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        path.write_text(json.dumps(config, indent=2))
        return cmd, env


@dataclass
class Figures:
    c_store: float = 0.0
    stow1: float = 0.0
    stow4: float = 0.0
    wado_rate: float = 0.0
    wado_p95: float = 0.0
    frame_rate: float = 0.0
    frame_p95: float = 0.0
    qido_p95: float = 0.0
    metadata: float = 0.0


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


def stow_one(url: str, data: bytes) -> None:
    boundary = "benchboundary0123"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    r = requests.post(url + "/studies", data=body, timeout=120, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    r.raise_for_status()


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def wait_http(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/studies", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise receivers.ReceiverError(f"no DICOMweb answer at {url}")


def measure(server: NodeServer | OrthancWeb, sets: list[list[Path]]) -> Figures:
    fig = Figures()
    server.start()
    try:
        url = server.url
        wait_http(url)
        first, second, third = sets
        env = receivers.clean_env(nodelay=True)
        started = time.perf_counter()
        subprocess.run(["storescu", "-aec", server.aet, "127.0.0.1", str(server.port),
                        *map(str, first)], check=True, env=env, capture_output=True)
        fig.c_store = len(first) / (time.perf_counter() - started)
        datas = [p.read_bytes() for p in second]
        started = time.perf_counter()
        for d in datas:
            stow_one(url, d)
        fig.stow1 = len(datas) / (time.perf_counter() - started)
        datas = [p.read_bytes() for p in third]
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda d: stow_one(url, d), datas))
        fig.stow4 = len(datas) / (time.perf_counter() - started)
        del datas
        import pydicom
        heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in first[:100]]
        base = [f"{url}/studies/{h.StudyInstanceUID}/series/{h.SeriesInstanceUID}"
                f"/instances/{h.SOPInstanceUID}" for h in heads]
        lat = [timed(lambda u=u: requests.get(u, headers=STAR, timeout=60).raise_for_status(),
                     1)[0] for u in base]
        fig.wado_rate, fig.wado_p95 = len(lat) / sum(lat), p95(lat)
        lat = [timed(lambda u=u: requests.get(u + "/frames/1", headers=FRAME,
                                              timeout=60).raise_for_status(), 1)[0]
               for u in base]
        fig.frame_rate, fig.frame_p95 = len(lat) / sum(lat), p95(lat)
        lat = timed(lambda: requests.get(url + "/studies", params={"PatientName": "doe*"},
                                         timeout=60).raise_for_status(), 50)
        fig.qido_p95 = p95(lat)
        h = heads[0]
        meta_url = f"{url}/studies/{h.StudyInstanceUID}/series/{h.SeriesInstanceUID}/metadata"
        fig.metadata = min(timed(lambda: requests.get(meta_url, timeout=300).raise_for_status(),
                                 3))
    finally:
        server.close()
    return fig


def qido_at_scale() -> tuple[int, float, int]:
    """(instances, p95 seconds, matches) of a study-level QIDO on a 100k-instance index."""
    from bench import query_bench
    from node import wiring
    from node.api import Node
    from node.settings import load

    home = Path(tempfile.mkdtemp(prefix="web-bench-qido-"))
    try:
        settings = load(home=home, environ={}, overrides={"http": {"port": 0}})
        node = Node.from_settings(settings, create_keys=True)
        count = query_bench.fill(node.core.catalog.engine)
        web = wiring.start_web(node.core, port=0)
        try:
            params = {"PatientName": "NAME012*"}
            matches = len(requests.get(web.url + "/studies", params=params, timeout=60).json())
            lat = timed(lambda: requests.get(web.url + "/studies", params=params,
                                             timeout=60).raise_for_status(), 100)
        finally:
            web.shutdown()
            node.close()
        return count, p95(lat), matches
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _rate(v: float) -> str:
    return f"{v:.0f}/s"


def _ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="100 instances: a smoke run")
    args = parser.parse_args()
    n = 100 if args.quick else args.instances
    work = Path(tempfile.mkdtemp(prefix="web-bench-"))
    results: dict[str, Figures] = {}
    notes = []
    try:
        patient = synthetic.Patient(patient_id="BENCH-1", name="Doe^Bench")
        sets = [[synthetic.write(ds, work / str(k))
                 for ds in synthetic.ct_series(n, size=args.size, patient=patient, seed=k)]
                for k in range(3)]
        console.print(f"{n} CT instances of {args.size}² per set, 3 sets", highlight=False)
        results["node"] = measure(NodeServer(), sets)
        orthanc, note = receivers.ensure_orthanc()
        if note:
            notes.append(note)
        if orthanc and Path(DICOMWEB_PLUGIN).exists():
            results["orthanc"] = measure(OrthancWeb(), sets)
        else:
            notes.append("Orthanc's DICOMweb plugin is not installed: no Orthanc column "
                         "(apt-get install orthanc orthanc-dicomweb)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    count, qido, matches = qido_at_scale()

    table = Table(title=f"DICOMweb and DIMSE, {n} CT instances of {args.size}², loopback")
    for column in ("path", "support-node", "Orthanc + DICOMweb", "node / Orthanc"):
        table.add_column(column, justify="right" if column != "path" else "left")
    node, other = results["node"], results.get("orthanc")
    rows = [("C-STORE, storescu, 1 association", "c_store", "/s", True),
            ("STOW-RS, 1 client", "stow1", "/s", True),
            ("STOW-RS, 4 clients", "stow4", "/s", True),
            ("WADO-RS instance, rate", "wado_rate", "/s", True),
            ("WADO-RS instance, p95", "wado_p95", "ms", False),
            ("WADO-RS frame, rate", "frame_rate", "/s", True),
            ("WADO-RS frame, p95", "frame_p95", "ms", False),
            ("QIDO-RS study, name wildcard, p95", "qido_p95", "ms", False),
            (f"series metadata, {n} instances", "metadata", "ms", False)]
    ok = True
    for label, attr, unit, higher in rows:
        mine = getattr(node, attr)
        theirs = getattr(other, attr) if other else None
        show = _rate if unit == "/s" else _ms
        ratio = ""
        if theirs:
            r = mine / theirs if higher else theirs / mine
            ratio = f"{r:.2f}"
            ok = ok and r >= 1.0
        table.add_row(label, show(mine), show(theirs) if theirs else "-", ratio)
    table.add_row(f"QIDO-RS study at {count:,} instances ({matches} matches), p95",
                  f"{qido * 1000:.1f} ms", "-", "target <= 20 ms")
    console.print(table)
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    console.print("every row at least Orthanc's figure: " + ("yes" if ok else "NO (see ratios "
                                                              "below 1.00)"), highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
