"""The outside review's smaller findings, each replayed through the real protocol."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from node import describe
from node.api import Node
from node.cli import app
from node.layout import legacy_patient_key, patient_key
from node.processing.worker import Worker
from pipelines import synthetic
from tests.fixtures.node import RunningNode
from tests.test_qr import destination  # noqa: F401  (a fixture: storescp as DEST)

Dcmtk = Callable[..., subprocess.CompletedProcess[str]]


def test_a_wildcard_retrieve_key_moves_nothing(
        dimse_factory: Callable[..., RunningNode], dcmtk: Dcmtk,
        destination: tuple[int, Path], tmp_path: Path) -> None:  # noqa: F811
    """C-MOVE at PATIENT level with PatientID '?*' moved every patient; retrieve keys are
    single values or UID lists (PS3.4 C.4.2.2.1), so it is refused and nothing moves."""
    node = dimse_factory({"destinations": {"DEST": {"host": "127.0.0.1",
                                                    "port": destination[0]}}})
    for n, pid in enumerate(("P-1", "P-2")):
        for ds in synthetic.ct_study(synthetic.Patient(pid, f"Name^{n}"), series=1,
                                     per_series=1, size=32, seed=n):
            node.node.write(synthetic.write(ds, tmp_path / "src").read_bytes())

    def move(*keys: str) -> subprocess.CompletedProcess[str]:
        args = [a for k in keys for a in ("-k", k)]
        return dcmtk("movescu", "-P", "-v", "-aem", "DEST", "-aec", node.ae_title, *args,
                     "127.0.0.1", str(node.port))

    for pattern in ("?*", "P-*", "P-1\\P-2"):
        refused = move("QueryRetrieveLevel=PATIENT", f"PatientID={pattern}")
        assert "DataSetDoesNotMatchSOPClass" in refused.stdout + refused.stderr, refused.stderr
    assert not [p for p in destination[1].rglob("*") if p.is_file()]
    moved = move("QueryRetrieveLevel=PATIENT", "PatientID=P-1")  # a single value still works
    assert moved.returncode == 0, moved.stderr
    assert len([p for p in destination[1].rglob("*") if p.is_file()]) == 1


def test_library_warnings_go_to_the_log_without_the_values(tmp_path: Path) -> None:
    """pydicom's "Invalid value for VR UI: '<patient name>'" went to stderr around the log
    (the review saw it during ``import``); now warnings go through the log, the quoted
    value replaced, in every process that sets up logging as the node does."""
    ds = synthetic.ct_study(synthetic.Patient("WARN-1", "Smith^Alice"), series=1,
                            per_series=1, size=32, seed=9)[0]
    ds.add_new(0x00200052, "UI", "Smith^Alice")  # a UI element holding the name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = synthetic.write(ds, tmp_path / "src")
    script = ("from node import logs; logs.configure('WARNING'); import pydicom, sys; "
              "ds = pydicom.dcmread(sys.argv[1]); ds.FrameOfReferenceUID")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True, timeout=60, check=False,
                            env={**os.environ, "PYTHONWARNINGS": "always"})
    assert result.returncode == 0, result.stderr
    assert "Smith" not in result.stderr
    assert "py.warnings" in result.stderr and "Invalid value for VR UI: '…'" in result.stderr


def _big_ct(path: Path, rows: int, frames: int) -> Path:
    """A multi-frame CT of zeros (compresses to almost nothing), written uncompressed."""
    ds = synthetic.ct_study(synthetic.Patient("BIG-1", "Big^Zero"), series=1, per_series=1,
                            size=32, seed=5)[0]
    ds.Rows = ds.Columns = rows
    ds.NumberOfFrames = frames
    ds.PixelData = bytes(rows * rows * 2 * frames)
    return synthetic.write(ds, path)


def test_an_inflation_bomb_and_an_oversized_instance_are_refused(
        dimse_factory: Callable[..., RunningNode], dcmtk: Dcmtk, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The review's bomb: a small deflated C-STORE that inflates to far more than the node
    takes was acknowledged (and held in memory several times). Now it is refused with
    0xA700 (out of resources) once inflation passes [dimse] max_instance_bytes, and so is an
    instance over the limit as sent; nothing is stored, and a smaller one still is."""
    node = dimse_factory({"dimse": {"max_instance_bytes": 8 << 20}})
    bomb = _big_ct(tmp_path / "bomb", 1024, 16)  # 32 MiB of zeros: ~32 KiB deflated
    sent = dcmtk("storescu", "-xd", "+cl", "9", "-v", "-aec", node.ae_title, "127.0.0.1",
                 str(node.port), str(bomb))
    assert "Refused: OutOfResources" in sent.stderr, sent.stderr
    assert "-> Deflated Explicit VR" in sent.stderr  # it did travel deflated
    # as sent, far over the limit: cut off once the limit (plus a MiB) has arrived
    plain = dcmtk("storescu", "-v", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                  str(bomb))
    assert plain.returncode != 0 and "Store Response" not in plain.stderr, plain.stderr
    assert any("aborted: a message passed" in r.getMessage() for r in caplog.records)
    # just over the limit: it arrives whole, and ingest refuses it with 0xA700
    near = _big_ct(tmp_path / "near", 1024, 4)  # 8 MiB of pixels + header > 8 MiB
    refused = dcmtk("storescu", "-v", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                    str(near))
    assert "Refused: OutOfResources" in refused.stderr, refused.stderr
    assert list(node.node.ls()) == []
    small = _big_ct(tmp_path / "small", 512, 4)  # 2 MiB: under the limit
    ok = dcmtk("storescu", "-xd", "-aec", node.ae_title, "127.0.0.1", str(node.port),
               str(small))
    assert ok.returncode == 0, ok.stderr
    assert len(list(node.node.ls())) == 1


def test_a_worker_does_not_decode_an_image_over_max_pixels(
        settings_factory: Callable[..., Any], tmp_path: Path) -> None:
    """Decoding is bounded: an image over [processing] max_pixels is marked undecodable
    with the reason, from its header, without decoding a pixel."""
    settings = settings_factory({"processing": {"max_pixels": 512 * 512 * 3}})
    node = Node.from_settings(settings, create_keys=True)
    try:
        node.write(_big_ct(tmp_path / "big", 512, 4).read_bytes())
        node.write(_big_ct(tmp_path / "ok", 512, 2).read_bytes())
        Worker(node.core).drain()
        states = sorted(rec.state for rec in node.ls())
        assert states == ["processed", "undecodable"]
        big = next(rec for rec in node.ls() if rec.state == "undecodable")
        doc = describe.decode(node.core.fs.cat_file(f"{big.object_key}/description.json"))
        assert "processing.max_pixels" in doc["processing"]["reason"]
    finally:
        node.close()


def _one(folder: Path, pid: str, seed: int) -> bytes:
    """One small CT instance of patient ``pid``, encoded."""
    ds = synthetic.ct_study(synthetic.Patient(pid, "Some^Person"), series=1, per_series=1,
                            size=32, seed=seed)[0]
    return synthetic.write(ds, folder / str(seed)).read_bytes()


def test_a_patients_folders_in_two_hospitals_cannot_be_linked(
        settings_factory: Callable[..., Any], tmp_path: Path) -> None:
    """The pseudonym ignored the hospital, so one person's folders in two hospitals had the
    same name. Now it includes the hospital; an index from before keeps its patients'
    folder names, so their later images join them, while new patients get the new kind."""
    settings = settings_factory()
    node = Node.from_settings(settings, create_keys=True)
    try:
        a = node.write(_one(tmp_path, "SHARED-1", 1), hospital="hosp-a")
        b = node.write(_one(tmp_path, "SHARED-1", 2), hospital="hosp-b")
        key_a, key_b = a.object_key.split("/")[1], b.object_key.split("/")[1]
        assert key_a != key_b
        keys = node.core.keyring
        assert key_a == patient_key(keys, "hosp-a", "SHARED-1", None)
        assert legacy_patient_key(keys, "SHARED-1", None) not in (key_a, key_b)
        assert node.resolve_patient("hosp-b", "SHARED-1") == [key_b]  # ls by Patient ID
    finally:
        node.close()


def test_an_index_from_before_keeps_its_patients_folder_names(
        settings_factory: Callable[..., Any], tmp_path: Path) -> None:
    settings = settings_factory()
    old = Node.from_settings(settings, create_keys=True)
    try:  # as an older version filed it: the pseudonym of issuer and ID only
        keys = old.core.keyring
        old.core.ingest.patient_keys.key = (  # type: ignore[method-assign]
            lambda hospital, pid, issuer: legacy_patient_key(keys, pid, issuer))
        first = old.write(_one(tmp_path, "OLD-1", 1))
    finally:
        old.close()
    node = Node.from_settings(settings)
    try:
        again = node.write(_one(tmp_path, "OLD-1", 2))
        newcomer = node.write(_one(tmp_path, "NEW-2", 3))
        assert again.object_key.split("/")[1] == first.object_key.split("/")[1]
        assert newcomer.object_key.split("/")[1] == patient_key(keys, "default", "NEW-2",
                                                                None)
    finally:
        node.close()


def test_an_older_copy_put_back_is_refused_not_read(
        settings_factory: Callable[..., Any], tmp_path: Path) -> None:
    """Putting an older ciphertext of a description back at its path returned the old
    contents with no error (it authenticates: same path, same key). Now the index knows each
    rewritten object's current version: the old copy is refused by every reader, and
    verify names it."""
    settings = settings_factory()
    node = Node.from_settings(settings, create_keys=True)
    try:
        rec = node.write(_big_ct(tmp_path / "one", 64, 1).read_bytes())
        store = Path(str(node.core.fs.root))
        description = store / rec.object_key / "description.json"
        before = description.read_bytes()  # as ingest wrote it: queued, not processed
        Worker(node.core).drain()
        processed = describe.decode(node.core.fs.cat_file(f"{rec.object_key}/description.json"))
        assert processed["processing"]["state"] == "processed"
        description.write_bytes(before)  # the rollback
    finally:
        node.close()
    runner = CliRunner()
    got = runner.invoke(app, ["get", "default", "--kind", "description", "--out",
                              str(tmp_path / "out"), "--home", str(settings.home)])
    assert got.exit_code == 3 and "not the current version" in got.output, got.output
    checked = runner.invoke(app, ["verify", "--home", str(settings.home)])
    assert checked.exit_code == 1 and "description.json" in checked.output, checked.output


def test_a_refused_get_says_so(dimse_factory: Callable[..., RunningNode], dcmtk: Dcmtk,
                               tmp_path: Path) -> None:
    """A C-GET refused (here: a wildcard retrieve key) answered Success with nothing sent;
    now the refusal's own status, and still nothing sent."""
    node = dimse_factory()
    for ds in synthetic.ct_study(synthetic.Patient("G-1", "Get^Me"), series=1, per_series=1,
                                 size=32, seed=4):
        node.node.write(synthetic.write(ds, tmp_path / "src").read_bytes())
    out = tmp_path / "got"
    out.mkdir()
    got = dcmtk("getscu", "-P", "-v", "-aec", node.ae_title, "-od", str(out),
                "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=G-*",
                "127.0.0.1", str(node.port))
    assert "DataSetDoesNotMatchSOPClass" in got.stdout + got.stderr, got.stderr
    assert not list(out.iterdir())
