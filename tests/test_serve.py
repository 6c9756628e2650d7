"""`support-node serve` as an operator runs it: a real process, a real association, SIGTERM."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from node.api import Node
from pipelines import synthetic
from tests.fixtures.node import free_port

SUPPORT_NODE = Path(sys.executable).parent / "support-node"
READY = re.compile(r"ready: DIMSE on (\S+):(\d+)")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORT_NODE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Served:
    """A `support-node serve` child process whose output lines are collected as they come."""

    def __init__(self, *args: str | Path, home: Path) -> None:
        if "--http-port" not in args:
            args = (*args, "--http-port", "0")  # a free port: never the default 8042
        self.proc = subprocess.Popen(
            # --init: a fresh home is made as `make run` makes it (a no-op on an existing one)
            [str(SUPPORT_NODE), "serve", "--init", "--home", str(home), *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(home))
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if match := pattern.search(line):
                return match
        raise AssertionError(f"no {pattern.pattern!r} in output:\n{self.output()}")

    def output(self) -> str:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def served() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for s in started:
        s.stop()


def _ct(tmp_path: Path) -> Path:
    ds = synthetic.ct_study(series=1, per_series=1, size=64, seed=11)[0]
    return synthetic.write(ds, tmp_path / "send")


def test_serve_stores_and_stops_cleanly_on_sigterm(tmp_path: Path,
                                                   served: list[Served]) -> None:
    home = tmp_path / "home"
    node = Served("--dimse-port", "0", "--ae-title", "TEST_NODE", home=home)
    served.append(node)
    ready = node.wait_for(READY)
    host, port = ready.group(1), int(ready.group(2))
    assert host == "127.0.0.1" and port > 0
    assert (home / "keys.json").exists()  # serve creates the keyring on first start

    path = _ct(tmp_path)
    ae = AE(ae_title="PYTEST")
    ae.add_requested_context(CTImageStorage, pydicom.dcmread(path).file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title="TEST_NODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert status.Status == 0x0000

    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=10) == 0
    out = node.output()
    assert "stopped" in out
    assert "Traceback" not in out
    assert "Quixote" not in out and "Doe^Jane" not in out  # no patient name in the log

    sent = pydicom.dcmread(path)
    with Node.open(home=home) as api:
        [rec] = list(api.ls())
        assert rec.sop_uid == sent.SOPInstanceUID
        assert rec.calling_ae == "PYTEST"
        stored = pydicom.dcmread(io.BytesIO(api.read_original(rec)))
        assert stored.PixelData == sent.PixelData


def test_serve_on_a_public_address_without_allow_list_refuses(tmp_path: Path,
                                                              served: list[Served]) -> None:
    node = Served("--host", "0.0.0.0", "--dimse-port", "0", home=tmp_path / "home")
    served.append(node)
    code = node.proc.wait(timeout=30)
    out = node.output()
    assert code != 0
    assert "dimse.host" in out
    assert "ready" not in out and "Traceback" not in out


def test_serve_reports_a_port_in_use(tmp_path: Path, served: list[Served]) -> None:
    first = Served("--dimse-port", "0", home=tmp_path / "one")
    served.append(first)
    port = first.wait_for(READY).group(2)
    second = Served("--dimse-port", port, home=tmp_path / "two")
    served.append(second)
    assert second.proc.wait(timeout=30) == 3
    out = second.output()
    assert f"cannot listen on 127.0.0.1:{port}" in out and "Traceback" not in out



def test_serve_with_worker_processes_shares_one_port(tmp_path: Path,
                                                     served: list[Served]) -> None:
    home = tmp_path / "home"
    port = free_port()
    node = Served("--dimse-port", str(port), "--workers", "2", home=home)
    served.append(node)
    assert "(2 workers)" in node.wait_for(READY, timeout=60).string

    # A second node cannot join the port by accident.
    other = Served("--dimse-port", str(port), "--workers", "2", home=tmp_path / "other")
    served.append(other)
    assert other.proc.wait(timeout=30) == 3
    assert "cannot listen" in other.output()

    study = synthetic.ct_study(series=4, per_series=3, size=64, seed=5)
    paths = [synthetic.write(ds, tmp_path / "send") for ds in study]

    def send(chunk: list[Path]) -> list[int]:
        ae = AE(ae_title="PYTEST")
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="SUPPORT_NODE")
        assert assoc.is_established
        try:
            return [int(assoc.send_c_store(p).Status) for p in chunk]
        finally:
            assoc.release()

    with __import__("concurrent.futures").futures.ThreadPoolExecutor(4) as pool:
        statuses = [s for r in pool.map(send, [paths[i::4] for i in range(4)]) for s in r]
    assert statuses == [0] * len(paths)

    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=30) == 0
    assert "stopped" in node.output() and "Traceback" not in node.output()
    with Node.open(home=home) as api:
        assert len(list(api.ls())) == len(paths)
