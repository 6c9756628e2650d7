"""Two nodes on one S3 store and PostgreSQL index, and the local spool each acknowledges from:
what the other node sees while an instance waits there, and a node lost with a full spool."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.api import Node
from node.settings import load
from pipelines import synthetic
from tests.fixtures.cluster import Dcmtk, cli, send, status, times
from tests.fixtures.node import free_port, make_settings
from tests.test_dimse import dataset_bytes
from tests.test_serve import READY, Served


def _two_nodes(homes: tuple[Path, Path], configs: list[dict[str, Any]]
               ) -> tuple[list[Served], list[Path]]:
    """Node A's home made by `init` with ``configs[0]``, B's with A's key file copied in,
    and both started (not yet waited for); the nodes and their config files."""
    for home, config in zip(homes, configs, strict=True):
        home.mkdir()
        make_settings(home, config)
    toml = [home.parent / f"{home.name}.toml" for home in homes]
    assert cli("init", "--home", homes[0], "--config", toml[0]).returncode == 0
    shutil.copy2(homes[0] / "keys.json", homes[1] / "keys.json")
    return [Served("--config", c, home=h) for h, c in zip(homes, toml, strict=True)], toml


def _wait_until_free(port: int, timeout: float = 30) -> None:
    """Waits until 127.0.0.1:``port`` can be bound again (the receiving processes of a node
    killed with -9 stop by themselves within a second or two of noticing)."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as serve probes
            try:
                probe.bind(("127.0.0.1", port))
                return
            except OSError:
                assert time.monotonic() < deadline, f"port {port} still taken"
        time.sleep(0.2)


# --- A retrieve through another node right after a store (the balancer's usual case) -------


@pytest.mark.parametrize("ack", ["store", "spool"])
def test_a_retrieve_through_another_node_right_after_the_store_gets_every_instance(
        ack: str, tmp_path: Path, s3_server: Any, s3_root: str, postgres_server: Any,
        dcmtk: Dcmtk) -> None:
    """Node B's S3 is 0.6 s away (the delay proxy, 0.3 s each way), so its uploads take a
    moment; a C-GET through node A at once must still get what B acknowledged (with the
    spool, A's reads wait for B's uploads: `[store] other_spool_wait`)."""
    from bench import delay_proxy

    s3_host, s3_port = s3_server.endpoint_url.rsplit("/", 1)[1].split(":")
    homes, ports = (tmp_path / "node-a", tmp_path / "node-b"), (free_port(), free_port())
    with delay_proxy.start(target=(s3_host, int(s3_port)), delay_s=0.3) as far, \
            postgres_server.database() as index_url:
        endpoints = (s3_server.endpoint_url, f"http://127.0.0.1:{far.port}")
        nodes, toml = _two_nodes(homes, [{
            "dimse": {"port": port},
            "store": {"url": f"s3://{s3_root}", "ack": ack,
                      "options": {**s3_server.options(), "endpoint_url": endpoint}},
            "index": {"url": index_url}, "processing": {"workers": 0}}
            for port, endpoint in zip(ports, endpoints, strict=True)])
        try:
            for node in nodes:
                node.wait_for(READY, timeout=60)
            study = synthetic.ct_study(series=1, per_series=3, size=32, seed=17)
            files = {ds.SOPInstanceUID: synthetic.write(ds, tmp_path / "in") for ds in study}
            sent = send(dcmtk, ports[1], "PACS", list(files.values()))
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
    wait in its spool, the other node's worker waits for them (1 s here), then postpones
    them (no failed attempt), and once B is back they are uploaded and processed once
    each."""
    from bench import delay_proxy

    s3_host, s3_port = s3_server.endpoint_url.rsplit("/", 1)[1].split(":")
    s3 = (s3_host, int(s3_port))
    homes, ports = (tmp_path / "node-a", tmp_path / "node-b"), (free_port(), free_port())
    link = delay_proxy.start(target=s3, delay_s=0.0)  # B's only way to the store
    with postgres_server.database() as index_url:
        endpoints = (s3_server.endpoint_url, f"http://127.0.0.1:{link.port}")
        nodes, toml = _two_nodes(homes, [{
            "dimse": {"port": port},
            "store": {"url": f"s3://{s3_root}", "other_spool_wait": 1.0,
                      "options": {**s3_server.options(), "endpoint_url": endpoint}},
            "index": {"url": index_url}, "recipes": {"small": {"size": 32}},
            "processing": {"recipe": "small", "workers": workers}}
            for port, endpoint, workers in zip(ports, endpoints, (1, 0), strict=True)])
        try:
            for node in nodes:
                node.wait_for(READY, timeout=60)
            link.stop()  # B's uploads now fail; its acknowledgements do not need the store
            study = synthetic.ct_study(series=1, per_series=6, size=32, seed=23)
            files = {ds.SOPInstanceUID: synthetic.write(ds, tmp_path / "in") for ds in study}
            sent = send(dcmtk, ports[1], "PACS", list(files.values()))
            assert sent.returncode == 0, sent.stderr[-3000:]
            nodes[1].proc.kill()  # -9: no chance to upload anything on the way out
            nodes[1].proc.wait()
            time.sleep(3)  # A's worker meets B's instances meanwhile
            doc = status(homes[0], toml[0])
            assert doc["spool"]["objects"] == 2 * len(files), doc
            assert doc["instances"] == len(files) and doc["processed"] == 0, doc
            assert doc["failed"] == 0 and doc["errors"] == [], doc

            link = delay_proxy.start(link.port, target=s3, delay_s=0.0)  # the way back
            _wait_until_free(ports[1])  # B's receivers notice their parent is gone
            nodes.append(Served("--config", toml[1], home=homes[1]))  # B again
            nodes[-1].wait_for(READY, timeout=60)
            deadline = time.monotonic() + 120
            while (doc := status(homes[0], toml[0]))["processed"] < len(files):
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
        assert times(rf"processed {re.escape(uid)}\b", a_log) == 1, a_log[-3000:]
    assert "not uploaded yet" in a_log  # postponed while B was away, not failed
