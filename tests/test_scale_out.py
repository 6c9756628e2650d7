"""The scale-out configuration end to end: S3 (SeaweedFS) for objects, PostgreSQL for the index;
one node, then two `serve` nodes side by side on the same store and index (issue 14).

More in test_scale_out_balancer.py (HAProxy, a worker elsewhere) and test_scale_out_spool.py
(the local spool seen from the other node).
"""

from __future__ import annotations

import io
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.api import Node
from node.index.jobs import JobQueue
from node.index.records import InstanceRecord, State
from node.layout import DESCRIPTION, ORIGINAL, OUTPUT
from pipelines import synthetic
from tests.fixtures.cluster import (
    QUIET_S,
    WATCH_S,
    Cluster,
    Dcmtk,
    cli,
    send,
    times,
    wait_uploaded,
)
from tests.fixtures.node import RunningNode, make_settings
from tests.test_dimse import dataset_bytes, storescu

SERIES = 12  # instances in the series; A gets 0-7, B gets 4-11: 4-7 go to both


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
    wait_uploaded(home, home.parent / f"{home.name}.toml")
    raw = s3_server.filesystem()
    keys = raw.find(s3_root)
    assert len(keys) == 12  # original + description per instance
    for key in keys:
        assert "PAT-0001" not in key
        assert b"Doe^Jane" not in raw.cat_file(key)


def _send_both(dcmtk: Dcmtk, cluster: Cluster, to_a: list[Path], to_b: list[Path]) -> None:
    """storescu to both nodes at once (so that the instances sent to both race)."""
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda args: send(dcmtk, *args),
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
        doc = wait_uploaded(home, config)
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
    checked = cli("verify", "--home", cluster.homes[1], "--config", cluster.configs[1],
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
        assert times(rf"processed {re.escape(sop)}\b", both_logs) == 1, sop
    assert times(rf"segmented series {re.escape(series_uid)}\b", both_logs) == 1
    assert times(rf"segmented series {re.escape(seg_series)}\b", both_logs) == 0
    print("processed by node A / node B:",
          [times(r"\bprocessed [0-9.]+\b", log) for log in logs])


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
        assert cli("init", "--home", homes[0], "--config", toml[0]).returncode == 0
        ds = synthetic.ct_study(series=1, per_series=1, size=32, seed=3)[0]
        stored = cli("import", synthetic.write(ds, tmp_path / "in"), "--home", homes[0],
                      "--config", toml[0])
        assert stored.returncode == 0, stored.stdout + stored.stderr
        for command in (["serve", "--init", "--dimse-port", "0", "--http-port", "0"], ["init"]):
            refused = cli(*command, "--home", homes[1], "--config", toml[1], timeout=60)
            assert refused.returncode == 3, refused.stdout + refused.stderr
            assert "key file not found" in refused.stderr
            assert f"index postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/" \
                in refused.stderr
            assert not (homes[1] / "keys.json").exists()
        shutil.copy2(homes[0] / "keys.json", homes[1] / "keys.json")
        listed = cli("ls", "--json", "--home", homes[1], "--config", toml[1])
        assert listed.returncode == 0 and ds.SOPInstanceUID in listed.stdout
