"""Back-pressure through the real protocols: a node over its queue or short of space says
"not now" (C-STORE 0xA700, STOW-RS 503 + Retry-After, /healthz "refusing", `status`), and
takes instances again by itself once below."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

from node import wiring
from node.api import Node
from node.cli import app
from node.pressure import Pressure
from node.processing.worker import Worker
from node.settings import Settings
from pipelines import synthetic
from tests.test_dimse import Dcmtk

TTL = 1.0  # how long a reading is cached (node.pressure)


def _files(tmp_path: Path, n: int, seed: int = 1) -> list[Path]:
    return [synthetic.write(ds, tmp_path / f"in{seed}")
            for ds in synthetic.ct_series(n, 64, seed=seed)]


@pytest.fixture
def running(settings_factory: Callable[..., Settings]) -> Iterator[Callable[..., Any]]:
    started: list[tuple[Any, Any, Node]] = []

    def start(config: dict[str, Any]) -> tuple[Node, int, str]:
        settings = settings_factory({"dimse": {"host": "127.0.0.1", "port": 0}, **config})
        node = Node.from_settings(settings, create_keys=True)
        scp = wiring.start_dimse(node.core)
        web = wiring.start_web(node.core, port=0)
        started.append((scp, web, node))
        return node, scp.server_address[1], web.url
    yield start
    for scp, web, node in started:
        web.shutdown()
        scp.shutdown()
        node.close()


def _store(dcmtk: Any, port: int, files: list[Path]) -> str:
    result = dcmtk("storescu", "-v", "-nh", "-aet", "PRESSURE", "-aec", "SUPPORT_NODE",
                   "127.0.0.1", str(port), *map(str, files))
    return result.stdout + result.stderr


def _stow(url: str, path: Path) -> requests.Response:
    body = (b"--b\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes()
            + b"\r\n--b--\r\n")
    return requests.post(f"{url}/studies", data=body, timeout=30, headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})


def test_over_the_queue_limit_senders_are_told_to_retry_and_service_resumes(
        running: Callable[..., Any], dcmtk: Dcmtk, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    node, port, url = running({"processing": {"max_queue": 2}})
    first, later = _files(tmp_path, 3), _files(tmp_path, 2, seed=2)
    assert _store(dcmtk, port, first).count("Received Store Response (Success)") == 3
    time.sleep(TTL + 0.1)  # the next reading sees 3 queued jobs
    out = _store(dcmtk, port, later[:1])
    assert "Refused: OutOfResources" in out or "0xa700" in out.lower(), out
    assert node.core.catalog.counts()["instances"] == 3
    assert any("processing.max_queue" in r.getMessage() for r in caplog.records)

    stow = _stow(url, later[1])
    assert stow.status_code == 503 and int(stow.headers["Retry-After"]) > 0
    health = requests.get(url.rsplit("/dicom-web", 1)[0] + "/healthz", timeout=30)
    assert health.status_code == 503 and health.json()["status"] == "refusing"
    assert health.json()["accepting"]["queue_depth"] == 3
    home = node.core.settings.home
    shown = CliRunner().invoke(app, ["status", "--home", str(home), "--config",
                                     str(home.parent / f"{home.name}.toml")])
    assert "accepting new instances: no, for now" in shown.output

    Worker(node.core).drain()  # the workers catch up: no restart needed
    time.sleep(TTL + 0.1)
    assert "Received Store Response (Success)" in _store(dcmtk, port, later[:1])
    assert _stow(url, later[1]).status_code == 200
    assert requests.get(url.rsplit("/dicom-web", 1)[0] + "/healthz",
                        timeout=30).json()["status"] == "ok"
    assert node.core.catalog.counts()["instances"] == 5


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (needs root and mount rights; skipped with the reason otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_free_space_watermark_refuses_and_recovers_when_space_is_freed(
        small_disk: Path) -> None:
    now = [0.0]
    pressure = Pressure([small_disk / "store"], 4 << 20, None, 0, clock=lambda: now[0])
    assert pressure.state().ok
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - (256 << 10)))
    assert pressure.state().ok, "cached for a second: no statvfs per instance"
    now[0] += TTL
    reading = pressure.state()
    assert not reading.ok and "store.min_free_bytes" in (reading.reason or "")
    # 5% of 16 MiB (0.8 MiB) is the watermark here, below the 4 MiB asked for.
    assert reading.free_bytes is not None and reading.free_bytes < 1 << 20
    os.unlink(ballast)
    now[0] += TTL
    assert pressure.state().ok


def test_zero_turns_the_watermarks_off(tmp_path: Path) -> None:
    pressure = Pressure([tmp_path], 0, lambda: 10**9, 0)
    assert pressure.state().ok
