"""The scale-out configuration end to end: S3 (SeaweedFS) for objects, PostgreSQL for the index;
one node, then two `serve` nodes side by side on the same store and index."""

from __future__ import annotations

import io
import json
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.api import Node
from node.index.jobs import JobQueue
from node.index.records import InstanceRecord, State
from node.layout import DESCRIPTION, ORIGINAL, OUTPUT
from node.settings import Settings, load
from pipelines import synthetic
from tests.fixtures.node import RunningNode, free_port, make_settings
from tests.test_dimse import dataset_bytes, storescu
from tests.test_serve import READY, SUPPORT_NODE, Served, _env

Dcmtk = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def scale_out_config(
        s3_server: Any, s3_root: str, postgres_server: Any) -> Iterator[dict[str, Any]]:
    with postgres_server.database() as index_url:
        yield {
            "store": {"url": f"s3://{s3_root}", "options": {
                "endpoint_url": s3_server.endpoint_url, "key": s3_server.key,
                "secret": s3_server.secret}},
            "index": {"url": index_url},
        }


def test_c_store_into_s3_and_postgresql_and_read_back(
        dimse_factory: Callable[..., RunningNode], scale_out_config: dict[str, Any],
        s3_server: Any, s3_root: str, dcmtk: Dcmtk, tmp_path: Path) -> None:
    node = dimse_factory(scale_out_config)
    study = synthetic.ct_study(series=2, per_series=3, size=64)
    files = [synthetic.write(ds, tmp_path) for ds in study]
    result = storescu(dcmtk, node, files)
    assert result.returncode == 0, result.stderr
    records = list(node.node.ls("default"))
    assert len(records) == 6
    sent = {dataset_bytes(p.read_bytes()) for p in files}
    assert {dataset_bytes(node.node.read_original(r)) for r in records} == sent
    # The bucket holds ciphertext only, under pseudonymous names (once uploaded, when the
    # node acknowledges from a local spool).
    home = node.settings.home
    _wait_uploaded(home, home.parent / f"{home.name}.toml")
    raw = s3_server.filesystem()
    keys = raw.find(s3_root)
    assert len(keys) == 12  # original + description per instance
    for key in keys:
        assert "PAT-0001" not in key
        assert b"Doe^Jane" not in raw.cat_file(key)


# --- Two `serve` nodes sharing one S3 store and one PostgreSQL index (issue 14) ---------

QUIET_S = 4  # [segment] quiet_seconds: long enough that a series is not complete mid-send
WATCH_S = 5.0  # how often each worker looks for complete series (Worker.watch_every)
SERIES = 12  # instances in the series; A gets 0-7, B gets 4-11: 4-7 go to both


def _cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SUPPORT_NODE), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=_env(Path(".")), check=False)


def _status(home: Path, config: Path) -> dict[str, Any]:
    out = _cli("status", "--json", "--home", home, "--config", config)
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _wait_uploaded(home: Path, config: Path, timeout: float = 120) -> dict[str, Any]:
    """``status --json`` of a node once no object waits in a spool for upload (the node
    acknowledges from its local spool; the uploader empties it in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = _status(home, config)
        waiting = doc.get("spool", {}).get("objects", 0)  # absent before the spool existed
        if not waiting:
            return doc
        assert time.monotonic() < deadline, f"{waiting} objects still wait for upload"
        time.sleep(0.5)


@dataclass
class Cluster:
    homes: tuple[Path, Path]
    configs: tuple[Path, Path]
    settings: tuple[Settings, Settings]
    ports: tuple[int, int]
    nodes: list[Served]
    s3_root: str
    http_ports: tuple[int, int]


@contextmanager
def _running_cluster(tmp_path: Path, s3_server: Any, s3_root: str, postgres_server: Any,
                     processing_workers: int) -> Iterator[Cluster]:
    homes = (tmp_path / "node-a", tmp_path / "node-b")
    ports = (free_port(), free_port())
    nodes: list[Served] = []
    with postgres_server.database() as index_url:
        settings, configs = [], []
        for home, port in zip(homes, ports, strict=True):
            home.mkdir()
            settings.append(make_settings(home, {
                "dimse": {"host": "127.0.0.1", "port": port},
                "store": {"url": f"s3://{s3_root}", "options": s3_server.options()},
                "index": {"url": index_url},
                "recipes": {"small": {"size": 32}},
                "processing": {"recipe": "small", "workers": processing_workers},
                "segment": {"model": "fcn/1", "quiet_seconds": QUIET_S}}))
            configs.append(tmp_path / f"{home.name}.toml")  # where make_settings wrote it
        init = _cli("init", "--home", homes[0], "--config", configs[0])
        assert init.returncode == 0, init.stdout + init.stderr
        shutil.copy2(homes[0] / "keys.json", homes[1] / "keys.json")  # same key, mode 0600
        _library_model(settings[0])
        try:
            for home, config in zip(homes, configs, strict=True):
                nodes.append(Served("--config", config, home=home))
            http = [_http_port(node.wait_for(READY, timeout=60).string) for node in nodes]
            yield Cluster(homes, (configs[0], configs[1]), (settings[0], settings[1]), ports,
                          nodes, s3_root, (http[0], http[1]))
        finally:
            for node in nodes:
                node.stop()


@pytest.fixture
def cluster(tmp_path: Path, s3_server: Any, s3_root: str,
            postgres_server: Any) -> Iterator[Cluster]:
    """Two `support-node serve` processes, separate homes and DIMSE ports, one AE title (as
    behind a balancer), one S3 bucket prefix, one PostgreSQL database, one key (A's key
    file copied to B's home), each with its own processing workers; a tiny FCN in the
    library as the `[segment] model`."""
    with _running_cluster(tmp_path, s3_server, s3_root, postgres_server, 1) as running:
        yield running


@pytest.fixture
def receivers(tmp_path: Path, s3_server: Any, s3_root: str,
              postgres_server: Any) -> Iterator[Cluster]:
    """The same two nodes as the README runs them: receiving only (`processing.workers =
    0`), the processing left to `support-node worker` elsewhere."""
    with _running_cluster(tmp_path, s3_server, s3_root, postgres_server, 0) as running:
        yield running


def _http_port(ready_line: str) -> int:
    match = re.search(r"HTTP on https?://[^ ]+?:(\d+)/", ready_line)
    assert match, ready_line
    return int(match.group(1))


def _library_model(settings: Settings) -> None:
    """A 3-level FCN that calls every pixel foreground (untrained, its last bias set): the
    series gets a DICOM SEG with one segment whatever the images hold."""
    import torch

    from node.ai.library import Library
    from pipelines.models import NetConfig, build_from

    net = NetConfig("fcn", features=(4, 8, 16))
    model = build_from(net)
    with torch.no_grad():
        dict(model.named_parameters())["up.0.deconv.bias"].copy_(torch.tensor([-20.0, 20.0]))
    with Node.from_settings(settings) as node:
        entry = Library.of(node).save("fcn", "segment", {"model": model.state_dict()},
                                      {"net": net.to_dict(), "size": 32})
    assert entry.id == "fcn/1"


def _send(dcmtk: Dcmtk, port: int, calling: str, files: list[Path]
          ) -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", "-R", "-nh", "-aet", calling, "-aec", "SUPPORT_NODE",
                 "127.0.0.1", str(port), *map(str, files), timeout=300)


def _send_both(dcmtk: Dcmtk, cluster: Cluster, to_a: list[Path], to_b: list[Path]) -> None:
    """storescu to both nodes at once (so that the instances sent to both race)."""
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda args: _send(dcmtk, *args),
                                [(cluster.ports[0], "SENDER_A", to_a),
                                 (cluster.ports[1], "SENDER_B", to_b)]))
    for r in results:
        assert r.returncode == 0 and "Store Failed" not in r.stderr, r.stderr[-3000:]


def _segs(node: Node, study_uid: str) -> list[InstanceRecord]:
    return [r for r in node.ls(None, None, study_uid) if r.modality == "SEG"]


def _wait_segmented(node: Node, study_uid: str, timeout: float = 240) -> None:
    """Until every instance is processed, a DICOM SEG of the series is stored and no job
    is left (the SEG's own processing included)."""
    queue = JobQueue(node.core.catalog)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = list(node.ls(None, None, study_uid))
        if (len(records) == SERIES + 1 and _segs(node, study_uid)
                and all(r.state != State.QUEUED for r in records) and queue.depth() == 0):
            return
        time.sleep(1.0)
    raise AssertionError(f"not segmented within {timeout:.0f} s: {queue.counts()}")


def _times(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


def test_two_nodes_on_one_store_and_index_accept_deduplicate_process_and_segment_once(
        cluster: Cluster, s3_server: Any, dcmtk: Dcmtk, tmp_path: Path) -> None:
    series = synthetic.ct_study(series=1, per_series=SERIES, size=64, seed=14)
    files = [synthetic.write(ds, tmp_path / "send") for ds in series]
    sent = {ds.SOPInstanceUID: dataset_bytes(p.read_bytes()) for ds, p in zip(series, files,
                                                                              strict=True)}
    study_uid, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    only_a, both, only_b = files[:4], files[4:8], files[8:]
    _send_both(dcmtk, cluster, both + only_a, both + only_b)  # the shared ones first: a race

    with Node.from_settings(cluster.settings[0]) as a, \
            Node.from_settings(cluster.settings[1]) as b:
        _wait_segmented(a, study_uid)
        # Instances sent again to either node after the series completed are no-ops: they
        # must neither store, nor process, nor open the series for a second segmentation.
        _send_both(dcmtk, cluster, only_a[:2] + only_b[:1], both[:1] + only_b[-2:])
        time.sleep(QUIET_S + 2 * WATCH_S + 1)  # both nodes' watchers look again, twice
        _wait_segmented(a, study_uid, timeout=60)

        # Indexed once each: one row per SOP Instance UID, no conflict copies.
        images = [r for r in a.ls(None, None, study_uid) if r.series_uid == series_uid]
        assert sorted(r.sop_uid for r in images) == sorted(sent)
        assert a.conflicts() == [] and b.conflicts() == []
        by_sop = {r.sop_uid: r for r in images}
        # Both nodes took instances: those sent to one node only carry that sender's AE.
        assert {by_sop[pydicom.dcmread(p).SOPInstanceUID].calling_ae for p in only_a} == {
            "SENDER_A"}
        assert {by_sop[pydicom.dcmread(p).SOPInstanceUID].calling_ae for p in only_b} == {
            "SENDER_B"}
        # Every instance decrypts, through either node's key file, to the bytes sent.
        for node in (a, b):
            for rec in images:
                assert dataset_bytes(node.read_original(rec)) == sent[rec.sop_uid]
        # Processed once each: one output each, one "processed" line over both nodes' logs.
        assert {r.state for r in images} == {State.PROCESSED}
        for rec in images:
            assert b.read_output(rec).shape == (1, 32, 32)
        # Segmented once: one DICOM SEG, made by the segment job, of every image.
        [seg] = _segs(a, study_uid)
        assert b.read_description(seg)["received"]["via"] == "segment"
        refs = {str(r.ReferencedSOPInstanceUID) for item in
                pydicom.dcmread(io.BytesIO(b.read_original(seg))).ReferencedSeriesSequence
                for r in item.ReferencedInstanceSequence}
        assert refs == set(sent)
        seg_series = seg.series_uid

    for home, config in zip(cluster.homes, cluster.configs, strict=True):
        doc = _wait_uploaded(home, config)
        assert doc["instances"] == SERIES + 1 and doc["queue_depth"] == 0, doc
        assert doc["failed"] == 0 and doc["failed_segment"] == 0, doc
    assert (cluster.homes[1] / "keys.json").read_bytes() == (
        cluster.homes[0] / "keys.json").read_bytes()  # B made no key of its own

    # The store: one folder per instance, each original and description once; nothing left
    # over (`verify` holds the store against the index: rows without objects, objects
    # without rows, temporary files).
    names = s3_server.filesystem().find(cluster.s3_root)
    folders: dict[str, set[str]] = {}
    for key in names:
        folder, name = key.rsplit("/", 1)
        folders.setdefault(folder.rsplit("/", 1)[1], set()).add(name)
    for sop in sent:
        assert {ORIGINAL, DESCRIPTION, OUTPUT} <= folders[sop], folders[sop]
    assert sum(key.endswith(f"/{ORIGINAL}") for key in names) == SERIES + 1
    checked = _cli("verify", "--home", cluster.homes[1], "--config", cluster.configs[1],
                   timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    for served in cluster.nodes:
        served.proc.send_signal(signal.SIGTERM)
    codes = [served.proc.wait(timeout=60) for served in cluster.nodes]
    logs = [served.output() for served in cluster.nodes]
    assert codes == [0, 0], logs
    both_logs = "\n".join(logs)
    assert "Traceback" not in both_logs
    assert "Doe^Jane" not in both_logs and "PAT-0001" not in both_logs
    for sop in sent:
        assert _times(rf"processed {re.escape(sop)}\b", both_logs) == 1, sop
    assert _times(rf"segmented series {re.escape(series_uid)}\b", both_logs) == 1
    assert _times(rf"segmented series {re.escape(seg_series)}\b", both_logs) == 0
    print("processed by node A / node B:",
          [_times(r"\bprocessed [0-9.]+\b", log) for log in logs])


def test_a_node_added_without_the_key_file_is_refused_a_key_of_its_own(
        tmp_path: Path, s3_server: Any, s3_root: str, postgres_server: Any) -> None:
    """`serve --init` on a second home must not make a second key once the shared index
    lists instances: every object the new node stored would be unreadable to the others."""
    with postgres_server.database() as index_url:
        config = {"store": {"url": f"s3://{s3_root}", "options": s3_server.options()},
                  "index": {"url": index_url}}
        homes = (tmp_path / "node-a", tmp_path / "node-b")
        for home in homes:
            home.mkdir()
            make_settings(home, config)
        toml = [tmp_path / f"{home.name}.toml" for home in homes]
        assert _cli("init", "--home", homes[0], "--config", toml[0]).returncode == 0
        ds = synthetic.ct_study(series=1, per_series=1, size=32, seed=3)[0]
        stored = _cli("import", synthetic.write(ds, tmp_path / "in"), "--home", homes[0],
                      "--config", toml[0])
        assert stored.returncode == 0, stored.stdout + stored.stderr
        for command in (["serve", "--init", "--dimse-port", "0", "--http-port", "0"], ["init"]):
            refused = _cli(*command, "--home", homes[1], "--config", toml[1], timeout=60)
            assert refused.returncode == 3, refused.stdout + refused.stderr
            assert "key file not found" in refused.stderr
            assert f"index postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/" \
                in refused.stderr
            assert not (homes[1] / "keys.json").exists()
        shutil.copy2(homes[0] / "keys.json", homes[1] / "keys.json")
        listed = _cli("ls", "--json", "--home", homes[1], "--config", toml[1])
        assert listed.returncode == 0 and ds.SOPInstanceUID in listed.stdout


# --- The README's HAProxy configuration in front of the two nodes ---------------------------

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
    import socket

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
        results = list(pool.map(lambda files: _send(dcmtk, port, "PACS", files), folders))
    for r in results:
        assert r.returncode == 0 and "Store Failed" not in r.stderr, r.stderr[-3000:]
    again = _send(dcmtk, port, "PACS", folders[0])  # a resend, to whichever node
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
        assert _times(rf"processed {re.escape(ds.SOPInstanceUID)}\b", worked) == 1, worked
    for served in receivers.nodes:
        assert _times(r"\bprocessed [0-9.]+", served.output()) == 0


# --- A retrieve through another node right after a store (the balancer's usual case) -------


@pytest.mark.parametrize("ack", [
    "store",
    pytest.param("spool", marks=pytest.mark.xfail(strict=True, reason=(
        "issue 14 finding: an instance in the receiving node's spool cannot be read through "
        "another node until it is uploaded (NotUploadedError: C-GET answers 0xA702 with "
        "nothing sent); README says so and advises ack = \"store\""))),
])
def test_a_retrieve_through_another_node_right_after_the_store_gets_every_instance(
        ack: str, tmp_path: Path, s3_server: Any, s3_root: str, postgres_server: Any,
        dcmtk: Dcmtk) -> None:
    """Node B's S3 is 0.6 s away (the delay proxy, 0.3 s each way), so its uploads take a
    moment; a C-GET through node A at once must still get what B acknowledged."""
    from bench import delay_proxy

    s3_host, s3_port = s3_server.endpoint_url.rsplit("/", 1)[1].split(":")
    homes, ports = (tmp_path / "node-a", tmp_path / "node-b"), (free_port(), free_port())
    with delay_proxy.start(target=(s3_host, int(s3_port)), delay_s=0.3) as far, \
            postgres_server.database() as index_url:
        endpoints = (s3_server.endpoint_url, f"http://127.0.0.1:{far.port}")
        for home, port, endpoint in zip(homes, ports, endpoints, strict=True):
            home.mkdir()
            make_settings(home, {
                "dimse": {"port": port},
                "store": {"url": f"s3://{s3_root}", "ack": ack,
                          "options": {**s3_server.options(), "endpoint_url": endpoint}},
                "index": {"url": index_url}, "processing": {"workers": 0}})
        toml = [tmp_path / f"{home.name}.toml" for home in homes]
        assert _cli("init", "--home", homes[0], "--config", toml[0]).returncode == 0
        shutil.copy2(homes[0] / "keys.json", homes[1] / "keys.json")
        nodes = [Served("--config", c, home=h) for h, c in zip(homes, toml, strict=True)]
        try:
            for node in nodes:
                node.wait_for(READY, timeout=60)
            study = synthetic.ct_study(series=1, per_series=3, size=32, seed=17)
            files = {ds.SOPInstanceUID: synthetic.write(ds, tmp_path / "in") for ds in study}
            sent = _send(dcmtk, ports[1], "PACS", list(files.values()))
            assert sent.returncode == 0, sent.stderr[-3000:]
            out = tmp_path / "got"
            out.mkdir()
            got = dcmtk("getscu", "-S", "-od", str(out), "-aec", "SUPPORT_NODE",
                        "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={study[0].StudyInstanceUID}",
                        "127.0.0.1", str(ports[0]))
        finally:
            for node in nodes:
                node.stop()
    assert got.returncode == 0 and "Refused" not in got.stderr, got.stderr[-3000:]
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in out.iterdir()}
    assert received.keys() == files.keys()
    for uid, path in received.items():
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(files[uid].read_bytes())


# --- A node lost with instances in its spool ----------------------------------------------


def test_a_node_lost_with_a_full_spool_loses_nothing_and_its_instances_are_processed_once(
        tmp_path: Path, s3_server: Any, s3_root: str, postgres_server: Any,
        dcmtk: Dcmtk) -> None:
    """Node B acknowledges while its way to S3 is cut, then is killed (-9): its instances
    wait in its spool, the other node's worker postpones them (no failed attempt), and once
    B is back they are uploaded and processed once each."""
    from bench import delay_proxy

    s3_host, s3_port = s3_server.endpoint_url.rsplit("/", 1)[1].split(":")
    s3 = (s3_host, int(s3_port))
    homes, ports = (tmp_path / "node-a", tmp_path / "node-b"), (free_port(), free_port())
    link = delay_proxy.start(target=s3, delay_s=0.0)  # B's only way to the store
    with postgres_server.database() as index_url:
        endpoints = (s3_server.endpoint_url, f"http://127.0.0.1:{link.port}")
        for home, port, endpoint, workers in zip(homes, ports, endpoints, (1, 0), strict=True):
            home.mkdir()
            make_settings(home, {
                "dimse": {"port": port},
                "store": {"url": f"s3://{s3_root}",
                          "options": {**s3_server.options(), "endpoint_url": endpoint}},
                "index": {"url": index_url}, "recipes": {"small": {"size": 32}},
                "processing": {"recipe": "small", "workers": workers}})
        toml = [tmp_path / f"{home.name}.toml" for home in homes]
        assert _cli("init", "--home", homes[0], "--config", toml[0]).returncode == 0
        shutil.copy2(homes[0] / "keys.json", homes[1] / "keys.json")
        nodes = [Served("--config", c, home=h) for h, c in zip(homes, toml, strict=True)]
        try:
            for node in nodes:
                node.wait_for(READY, timeout=60)
            link.stop()  # B's uploads now fail; its acknowledgements do not need the store
            study = synthetic.ct_study(series=1, per_series=6, size=32, seed=23)
            files = {ds.SOPInstanceUID: synthetic.write(ds, tmp_path / "in") for ds in study}
            sent = _send(dcmtk, ports[1], "PACS", list(files.values()))
            assert sent.returncode == 0, sent.stderr[-3000:]
            nodes[1].proc.kill()  # -9: no chance to upload anything on the way out
            nodes[1].proc.wait()
            time.sleep(3)  # A's worker meets B's instances meanwhile
            doc = _status(homes[0], toml[0])
            assert doc["spool"]["objects"] == 2 * len(files), doc
            assert doc["instances"] == len(files) and doc["processed"] == 0, doc
            assert doc["failed"] == 0 and doc["errors"] == [], doc

            link = delay_proxy.start(link.port, target=s3, delay_s=0.0)  # the way back
            nodes.append(Served("--config", toml[1], home=homes[1]))  # B again
            nodes[-1].wait_for(READY, timeout=60)
            deadline = time.monotonic() + 120
            while (doc := _status(homes[0], toml[0]))["processed"] < len(files):
                assert time.monotonic() < deadline, doc
                time.sleep(1)
            assert doc["spool"]["objects"] == 0 and doc["failed"] == 0, doc
            with Node.from_settings(load(config=toml[0], home=homes[0], environ={})) as a:
                records = list(a.ls())
                assert sorted(r.sop_uid for r in records) == sorted(files)
                for rec in records:
                    assert dataset_bytes(a.read_original(rec)) == dataset_bytes(
                        files[rec.sop_uid].read_bytes())
        finally:
            for node in nodes:
                node.stop()
            link.stop()
    a_log = nodes[0].output()
    for uid in files:
        assert _times(rf"processed {re.escape(uid)}\b", a_log) == 1, a_log[-3000:]
    assert "not uploaded yet" in a_log  # postponed while B was away, not failed
