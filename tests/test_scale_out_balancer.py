"""The README's deployment of several nodes, run whole: its HAProxy block (mode tcp, leastconn,
/healthz checks) in front of two receiving nodes, and a `support-node worker` elsewhere."""

from __future__ import annotations

import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from node.api import Node
from node.index.records import State
from pipelines import synthetic
from tests.fixtures.cluster import Cluster, Dcmtk, send, times
from tests.fixtures.node import free_port
from tests.test_dimse import dataset_bytes
from tests.test_serve import SUPPORT_NODE, Served, _env

README = Path(__file__).resolve().parents[1] / "README.md"


def _haproxy_config(cluster: Cluster, port: int, stats: Path) -> str:
    """The README's HAProxy block with this machine's addresses: the frontend on
    127.0.0.1:``port``, two servers (the nodes' DIMSE ports, checked on their HTTP ports)."""
    text = README.read_text()
    part = text[text.index("## Running several nodes"):]
    [block] = re.findall(r"^```\n(frontend .*?)^```", part, re.S | re.M)[:1]
    block = block.replace("bind :11112", f"bind 127.0.0.1:{port}")
    servers = [line for line in block.splitlines() if line.strip().startswith("server ")]
    assert len(servers) >= 2, block
    for i, line in enumerate(servers):
        if i < 2:
            block = block.replace(line, re.sub(
                r"\S+:11112 check port 8042",
                f"127.0.0.1:{cluster.ports[i]} check port {cluster.http_ports[i]}", line))
        else:
            block = block.replace(line + "\n", "")
    return f"global\n    stats socket {stats} level operator\n\n{block}"


def _haproxy_stats(stats: Path) -> dict[str, dict[str, str]]:
    """``show stat`` of the running HAProxy: server name -> its CSV row."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(stats))
        sock.sendall(b"show stat\n")
        data = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    header, *rows = [line for line in data.splitlines() if line]
    names = header.lstrip("# ").split(",")
    out = {}
    for row in rows:
        doc = dict(zip(names, row.split(","), strict=False))
        if doc.get("svname", "").startswith("node"):
            out[doc["svname"]] = doc
    return out


@pytest.fixture
def haproxy(receivers: Cluster, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """HAProxy with the README's configuration in front of the cluster: (port, stats)."""
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if binary is None:
        reason = "HAProxy is not installed (apt-get install haproxy): balancer test skipped"
        print(reason)
        pytest.skip(reason)
    port, stats = free_port(), tmp_path / "haproxy.sock"
    config = tmp_path / "haproxy.cfg"
    config.write_text(_haproxy_config(receivers, port, stats))
    checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True,
                             timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:  # both servers up: their /healthz said 200
            try:
                if {s["status"] for s in _haproxy_stats(stats).values()} == {"UP"}:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, _haproxy_stats(stats)
            time.sleep(0.3)
        yield port, stats
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class _Worker(Served):
    """`support-node worker` in the foreground, as on a host of its own."""

    def __init__(self, *args: str | Path, home: Path) -> None:
        self.proc = subprocess.Popen(
            [str(SUPPORT_NODE), "worker", "--home", str(home), *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(home))
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, daemon=True).start()


def test_senders_through_the_readme_haproxy_reach_both_nodes_and_a_worker_elsewhere(
        receivers: Cluster, haproxy: tuple[int, Path], dcmtk: Dcmtk, tmp_path: Path) -> None:
    """The README's deployment: HAProxy (its own block) in front of two receiving nodes,
    and the processing in a `support-node worker` with a home of its own (the config and
    a copy of the key file)."""
    port, stats = haproxy
    study = synthetic.ct_study(series=4, per_series=4, size=32, seed=41)
    folders = []
    for i in range(4):  # four senders, one series each, at once
        folders.append([synthetic.write(ds, tmp_path / f"s{i}") for ds in study[4 * i:4 * i + 4]])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda files: send(dcmtk, port, "PACS", files), folders))
    for r in results:
        assert r.returncode == 0 and "Store Failed" not in r.stderr, r.stderr[-3000:]
    again = send(dcmtk, port, "PACS", folders[0])  # a resend, to whichever node
    assert again.returncode == 0, again.stderr[-3000:]
    sessions = {name: int(row["stot"]) for name, row in _haproxy_stats(stats).items()}
    assert sessions.keys() == {"node1", "node2"}
    assert sum(sessions.values()) == 5 and min(sessions.values()) >= 1, sessions

    worker_home = tmp_path / "worker"
    worker_home.mkdir()
    shutil.copy2(receivers.homes[0] / "keys.json", worker_home / "keys.json")
    worker = _Worker("--config", receivers.configs[0], "--kinds", "process", home=worker_home)
    try:
        worker.wait_for(re.compile(r"support-node worker ready \(process\)"), timeout=60)
        with Node.from_settings(receivers.settings[1]) as b:
            deadline = time.monotonic() + 120
            while True:
                records = [r for r in b.ls() if r.modality == "CT"]
                if len(records) == len(study) and all(
                        r.state == State.PROCESSED for r in records):
                    break
                assert time.monotonic() < deadline, [r.state for r in records]
                time.sleep(0.5)
            assert sorted(r.sop_uid for r in records) == sorted(
                ds.SOPInstanceUID for ds in study)
            assert b.conflicts() == []
            sent = {ds.SOPInstanceUID: dataset_bytes(p.read_bytes())
                    for ds, p in zip(study, [p for f in folders for p in f], strict=True)}
            for rec in records:
                assert dataset_bytes(b.read_original(rec)) == sent[rec.sop_uid]
                assert b.read_output(rec).shape == (1, 32, 32)
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(timeout=60) == 0
    finally:
        worker.stop()
    worked = worker.output()
    for ds in study:  # each once, all by the worker; the receivers processed nothing
        assert times(rf"processed {re.escape(ds.SOPInstanceUID)}\b", worked) == 1, worked
    for served in receivers.nodes:
        assert times(r"\bprocessed [0-9.]+", served.output()) == 0
