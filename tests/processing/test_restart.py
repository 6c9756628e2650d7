"""Real processes: `serve` processes what storescu sends; a worker killed with SIGKILL in
the middle of the queue loses nothing and records nothing twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from node.api import Node
from node.index.jobs import JobQueue
from node.index.records import State
from node.settings import load
from pipelines import synthetic
from tests.fixtures.node import free_port
from tests.fixtures.waiting import eventually
from tests.test_serve import READY, Served

SUPPORT_NODE = Path(sys.executable).parent / "support-node"
COMMITTED = re.compile(r"support_node.processing: processed (\S+)")


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORT_NODE_")}
    return clean | {"PYTHONUNBUFFERED": "1"}


def counts(home: Path):  # type: ignore[no-untyped-def]
    with Node.open(home=home) as node:
        return JobQueue(node.core.catalog).counts()


@pytest.mark.slow
def test_serve_processes_what_storescu_sends(tmp_path: Path, dcmtk) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "series"
    for ds in synthetic.ct_series(20, size=128, seed=21):
        synthetic.write(ds, folder)
    home = tmp_path / "home"
    served = Served("--dimse-port", free_port(), "--processing-workers", "1", home=home)
    try:
        port = int(served.wait_for(READY).group(2))
        dcmtk("storescu", "-aec", "SUPPORT_NODE", "127.0.0.1", str(port), "+sd", str(folder))
        assert eventually(lambda: counts(home).instances.get(State.PROCESSED) == 20, 60, every=0.2)
        assert counts(home).queue_depth == 0
    finally:
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(30)
    assert served.proc.returncode == 0, served.output()


@pytest.mark.slow
def test_a_killed_worker_loses_nothing_and_records_nothing_twice(tmp_path: Path) -> None:
    home = tmp_path / "home"
    total = 120
    with Node.open(home=home, create_keys=True) as node:
        for ds in synthetic.ct_series(total, size=256, seed=22):
            node.write(_encode(ds))
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with logs[0].open("w") as log:
        first = subprocess.Popen([str(SUPPORT_NODE), "worker", "--home", str(home)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env())
        try:
            assert eventually(lambda: len(COMMITTED.findall(logs[0].read_text())) >= 15, 60)
        finally:
            first.send_signal(signal.SIGKILL)  # no chance to finish or clean up
            first.wait()
    at_kill = counts(home)
    assert at_kill.queue_depth > 0, "the worker finished before it was killed"
    assert at_kill.jobs.get("running", 0) >= 1  # it held jobs when it died

    with logs[1].open("w") as log:
        second = subprocess.run([str(SUPPORT_NODE), "worker", "--once", "--home", str(home)],
                                stdout=log, stderr=subprocess.STDOUT, env=env(), timeout=240)
    assert second.returncode == 0, logs[1].read_text()

    after = counts(home)
    assert after.queue_depth == 0 and after.jobs == {}
    assert after.instances == {State.PROCESSED: total}
    recorded = Counter(uid for log in logs[:1] for uid in COMMITTED.findall(log.read_text()))
    assert max(recorded.values()) == 1  # nothing the killed worker recorded was redone
    with Node.open(home=home) as node:
        for rec in node.ls():
            assert node.read_output(rec).shape == (1, 512, 512)
            assert node.read_description(rec)["processing"]["state"] == State.PROCESSED
        settings = load(home=home)
        from node.processing.shared_filter import SharedFilter
        model = SharedFilter(node.core.fs, node.core.catalog, settings.processing)
        learnt = model.filter.n_learnt + len(model.filter._pending)
        assert learnt <= total  # no image learnt twice (those after the last save are lost)


def _encode(ds) -> bytes:  # type: ignore[no-untyped-def]
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
