"""README.md's tour, run as written: the ``sh`` blocks from "A five-minute tour" up to
"Commands" (the tour, a recipe, query and retrieve, a first model), in order, as one bash
script in a fresh folder, with dcmtk's tools and the real ``support-node``.

Only what cannot be the same on a test machine changes: the DIMSE and HTTP ports (free ones
instead of 11112 and 8042, through SUPPORT_NODE_DIMSE_PORT / _HTTP_PORT and in the dcmtk
command lines) and ``$PWD/.venv/bin`` (this checkout's virtual environment). If the README
changes, this test runs the new commands; if a command stops working, it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.node import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIRST, LAST = "## A five-minute tour", "## Commands"


def tour_blocks(text: str) -> list[str]:
    """The ``sh`` code blocks between the tour's heading and the command table."""
    part = text[text.index(FIRST):text.index(LAST)]
    return re.findall(r"^```sh\n(.*?)^```", part, re.S | re.M)


def script(blocks: list[str], dimse_port: int) -> str:
    venv = str(Path(sys.executable).parent)
    body = "\n".join(blocks).replace("$PWD/.venv/bin", venv)
    body = re.sub(r"\b11112\b", str(dimse_port), body)
    return "set -euo pipefail\n" + body


def test_the_readme_has_the_tour_and_first_model_blocks() -> None:
    blocks = tour_blocks(README.read_text())
    joined = "\n".join(blocks)
    for command in ("support-node serve &", "storescu -R +sd +r", "findscu -v",
                    "mkdir -p ./got", "support-node demo", "support-node train",
                    "support-node segment", "--recipe ct-soft", "[recipes.ct-soft]"):
        assert command in joined, command


@pytest.mark.skipif(shutil.which("storescu", path="/usr/bin") is None,
                    reason="dcmtk is not installed (apt-get install dcmtk, or make test)")
@pytest.mark.timeout(480)
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    dimse, http = free_port(), free_port()
    text = script(tour_blocks(README.read_text()), dimse)
    (tmp_path / "tour.sh").write_text(text)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "TMPDIR": str(tmp_path), "TCP_NODELAY": "1", "COLUMNS": "200",
           "SUPPORT_NODE_DIMSE_PORT": str(dimse), "SUPPORT_NODE_HTTP_PORT": str(http)}
    # Without the venv on PATH, as on a fresh shell: the tour's first line adds it, after.
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if ".venv" not in p)
    log = tmp_path / "tour.log"
    with log.open("w") as sink:
        # A file, not a pipe: serve's workers would hold a pipe open after the script ends.
        proc = subprocess.Popen(["bash", "tour.sh"], cwd=tmp_path, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=400)
        finally:
            try:  # serve, if the script stopped before its `kill %1`
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    output = log.read_text()
    assert proc.returncode == 0, output[-6000:]
    assert "/usr/bin/storescu" in output  # dcmtk's, not pynetdicom's
    assert "Received Echo Response (Success)" in output
    assert re.search(r"processed\s+48\b", output) and re.search(r"with a label map\s+48\b",
                                                                  output)
    assert "LES-0001" in output and "Received Final Find Response (Success)" in output
    assert len(list((tmp_path / "got").iterdir())) == 13  # 12 CT slices and their SEG
    assert len(list((tmp_path / "ai").rglob("*.npy"))) == 12
    assert len(list((tmp_path / "look").rglob("*.png"))) == 12
    assert "queued 13 instances with recipe ct-soft@1" in output
    assert "saved as unet/2" in output
    assert "1 DICOM SEG stored" in output
    assert "Traceback" not in output


def make_recipe(target: str) -> list[str]:
    """The command lines of a Makefile target, with ``$(BIN)`` this checkout's venv."""
    text = (ROOT / "Makefile").read_text()
    block = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.M)
    assert block, target
    venv = str(Path(sys.executable).parent)
    return [line.strip().replace("$(BIN)", venv) for line in block.group(1).splitlines()]


def test_make_run_starts_the_node_on_a_fresh_machine(tmp_path: Path) -> None:
    # serve refuses a home init did not make; make run's own command makes it.
    [command] = make_recipe("run")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "SUPPORT_NODE_DIMSE_PORT": str(free_port()), "SUPPORT_NODE_HTTP_PORT": "0",
           "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "run.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(["bash", "-c", command], cwd=tmp_path, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            for _ in range(120):
                if "ready: DIMSE on" in log.read_text() or proc.poll() is not None:
                    break
                time.sleep(0.5)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    output = log.read_text()
    assert "ready: DIMSE on" in output, output[-3000:]
    assert (tmp_path / "var" / "keys.json").is_file()
    assert "Traceback" not in output
