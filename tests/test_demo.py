"""``support-node demo``: labelled phantoms into the node, to a node by C-STORE, or as
files; and DICOM SEGs that arrive before their images are matched when the images come."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pydicom
from typer.testing import CliRunner, Result

from node.ai import labels
from node.api import Node
from node.cli import app
from node.index.records import State
from node.processing.worker import Worker
from tests.fixtures.node import RunningNode

runner = CliRunner()
SMALL = ["--slices", "3", "--size", "32"]


def cli(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def test_demo_stores_labelled_patients_that_a_worker_turns_into_labelled_images(
        tmp_path: Path) -> None:
    home = tmp_path / "var"
    made = cli("demo", "--patients", "2", *SMALL, "--home", home)
    assert made.exit_code == 0, made.output
    assert "LES-0001..LES-0002" in made.output and "8 stored" in made.output
    assert cli("worker", "--once", "--home", home).exit_code == 0
    status = json.loads(cli("status", "--json", "--home", home).stdout)
    assert status[State.PROCESSED] == 6 and status[State.LABELS] == 2
    assert status["labelled"] == 6
    listed = [json.loads(line) for line in
              cli("ls", "default", "LES-0002", "--json", "--home", home).stdout.splitlines()]
    assert len(listed) == 4 and {r["patient_id"] for r in listed} == {"LES-0002"}


def test_demo_is_refused_with_a_clear_message_for_bad_counts(tmp_path: Path) -> None:
    result = cli("demo", "--patients", "0", "--home", tmp_path / "var")
    assert result.exit_code == 2 and "--patients 0" in result.output
    assert not (tmp_path / "var").exists()


def test_a_seg_that_arrives_before_its_images_labels_them_when_they_arrive(
        tmp_path: Path) -> None:
    files, home = tmp_path / "files", tmp_path / "var"
    assert cli("demo", "--patients", "1", *SMALL, "--out", files).exit_code == 0
    assert cli("import", files / "LES-0001" / "seg", "--home", home).exit_code == 0
    assert cli("worker", "--once", "--home", home).exit_code == 0  # the SEG: all missing
    assert cli("import", files / "LES-0001" / "ct", "--home", home).exit_code == 0
    assert cli("worker", "--once", "--home", home).exit_code == 0
    with Node.open(home=home) as node:
        images = [r for r in node.ls() if r.modality == "CT"]
        assert len(images) == 3 and all(r.labels and r.labels.startswith("seg:")
                                         for r in images)
        seg = next(r for r in node.ls() if r.state == State.LABELS)
        section = node.read_description(seg)["processing"]
        assert section["missing"] == [] and len(section["matched"]) == 3
        ct = pydicom.dcmread(next((files / "LES-0001" / "ct").iterdir()))
        mask = labels.read(node.core, node.core.catalog.get_instance(ct.SOPInstanceUID))
        assert mask.shape == (1, 32, 32)


def test_demo_sends_by_c_store_to_a_running_node(
        dimse_factory: Callable[..., RunningNode]) -> None:
    running = dimse_factory()
    result = cli("demo", "--patients", "1", *SMALL, "--send", "127.0.0.1", str(running.port),
                 "--aec", running.ae_title)
    assert result.exit_code == 0, result.output
    assert "4 sent" in result.output
    assert len(list(running.node.ls(None, "LES-0001"))) == 4
    Worker(running.node.core).drain()
    assert all(r.labels for r in running.node.ls() if r.modality == "CT")


def test_demo_send_to_nothing_listening_says_so(tmp_path: Path) -> None:
    from tests.fixtures.node import free_port

    result = cli("demo", "--patients", "1", *SMALL, "--send", "127.0.0.1", str(free_port()))
    assert result.exit_code == 3
    assert "no association with SUPPORT_NODE" in result.output
    assert "Traceback" not in result.output


def test_demo_patients_have_the_same_pixels_for_the_same_seed() -> None:
    from node.cli.demo import demo_patients

    a = next(demo_patients(1, 2, 32, seed=5))
    b = next(demo_patients(1, 2, 32, seed=5))
    assert a.images[0].PixelData == b.images[0].PixelData
    assert a.images[0].SOPInstanceUID != b.images[0].SOPInstanceUID


def test_home_may_come_before_the_command(tmp_path: Path) -> None:
    home = tmp_path / "var"
    assert cli("--home", home, "demo", "--patients", "1", *SMALL).exit_code == 0
    listed = cli("--home", home, "ls", "default", "LES-0001")
    assert listed.exit_code == 0 and "4 instances" in listed.output
