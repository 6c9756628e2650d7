"""Nothing crosses a hospital: the outside review's attack, replayed with dcmtk.

HOSP_A files into hospa, HOSP_B into hospb. HOSP_B sends BOB's image under ALICE's Study
Instance UID, other bytes under one of ALICE's SOP Instance UIDs, and a copy of one of
ALICE's instances. Before the fix, HOSP_A's C-MOVE of ALICE's study delivered BOB's image,
``ls`` listed hospb's object as hospa / ALICE, and HOSP_B's bytes were filed in hospa's tree.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from node.cli import app
from pipelines import synthetic
from tests.fixtures.node import RunningNode
from tests.test_qr import destination  # noqa: F401  (a fixture: storescp as DEST)

Dcmtk = Callable[..., subprocess.CompletedProcess[str]]
ALICE = synthetic.Patient("ALICE-1", "Alice^A", "19700101", "F")
BOB = synthetic.Patient("BOB-2", "Bob^B", "19800202", "M")
CAROL = synthetic.Patient("CAROL-3", "Carol^C", "19900303", "F")


def _store(dcmtk: Dcmtk, node: RunningNode, calling: str, *paths: Path) -> None:
    result = dcmtk("storescu", "-aet", calling, "-aec", node.ae_title, "127.0.0.1",
                   str(node.port), *map(str, paths))
    assert result.returncode == 0, result.stderr


def _image_count(dcmtk: Dcmtk, node: RunningNode, calling: str, study: str,
                 out: Path) -> int:
    out.mkdir()
    result = dcmtk("findscu", "-S", "-X", "-od", str(out), "-aet", calling, "-aec",
                   node.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={study}", "-k", "NumberOfStudyRelatedInstances",
                   "127.0.0.1", str(node.port))
    assert result.returncode == 0, result.stderr
    found = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    return sum(int(ds.NumberOfStudyRelatedInstances) for ds in found)


def test_one_hospital_cannot_put_an_instance_into_another_hospitals_study(
        dimse_factory: Callable[..., RunningNode], dcmtk: Dcmtk,
        destination: tuple[int, Path], tmp_path: Path) -> None:  # noqa: F811
    node = dimse_factory({
        "dimse": {"callers": {"HOSP_A": {"hospital": "hospa"},
                              "HOSP_A2": {"hospital": "hospa"},
                              "HOSP_B": {"hospital": "hospb"}}},
        "destinations": {"DEST": {"host": "127.0.0.1", "port": destination[0]}}})
    alice = synthetic.ct_study(ALICE, series=1, per_series=2, size=32, seed=1)
    alice_files = [synthetic.write(ds, tmp_path / "alice") for ds in alice]
    _store(dcmtk, node, "HOSP_A", *alice_files)
    study = str(alice[0].StudyInstanceUID)

    # HOSP_B: BOB under ALICE's study UID; other bytes under ALICE's SOP UID; ALICE's copy
    bob = synthetic.ct_study(BOB, series=1, per_series=1, size=32, seed=2,
                             study_uid=study)[0]
    forged = synthetic.ct_study(BOB, series=1, per_series=1, size=32, seed=3)[0]
    forged.SOPInstanceUID = alice[0].SOPInstanceUID
    forged.file_meta.MediaStorageSOPInstanceUID = alice[0].SOPInstanceUID
    _store(dcmtk, node, "HOSP_B", synthetic.write(bob, tmp_path / "bob"),
           synthetic.write(forged, tmp_path / "forged"), alice_files[1])
    # HOSP_A2 (same hospital): CAROL under ALICE's study UID, a new series
    carol = synthetic.ct_study(CAROL, series=1, per_series=1, size=32, seed=4,
                               study_uid=study)[0]
    carol.SeriesInstanceUID = generate_uid()
    _store(dcmtk, node, "HOSP_A2", synthetic.write(carol, tmp_path / "carol"))

    # ALICE's study holds ALICE's two images, for her hospital, and nothing for hospb
    assert _image_count(dcmtk, node, "HOSP_A", study, tmp_path / "find-a") == 2
    assert _image_count(dcmtk, node, "HOSP_B", study, tmp_path / "find-b") == 0
    moved = dcmtk("movescu", "-S", "-aet", "HOSP_A", "-aem", "DEST", "-aec", node.ae_title,
                  "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                  "127.0.0.1", str(node.port))
    assert moved.returncode == 0, moved.stderr
    arrived = [pydicom.dcmread(p) for p in destination[1].rglob("*") if p.is_file()]
    assert sorted(str(ds.PatientID) for ds in arrived) == ["ALICE-1", "ALICE-1"]
    assert {ds.SOPInstanceUID for ds in arrived} == {ds.SOPInstanceUID for ds in alice}
    assert all(ds.PixelData == orig.PixelData for ds, orig in zip(
        sorted(arrived, key=lambda d: d.SOPInstanceUID),
        sorted(alice, key=lambda d: d.SOPInstanceUID), strict=True))

    # the listing: hospa holds ALICE only; every one of HOSP_B's sends is kept, in hospb
    listed = CliRunner().invoke(app, ["ls", "--json", "--home", str(node.settings.home)])
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    assert sorted((r["hospital"], r["sop_uid"]) for r in rows) == sorted(
        ("hospa", str(ds.SOPInstanceUID)) for ds in alice)
    conflicts = node.node.core.catalog.conflicts()
    by_sop = {(c.sop_uid, c.object_key.split("/")[0]) for c in conflicts}
    assert (str(bob.SOPInstanceUID), "hospb") in by_sop
    assert (str(forged.SOPInstanceUID), "hospb") in by_sop
    assert (str(alice[1].SOPInstanceUID), "hospb") in by_sop
    assert (str(carol.SOPInstanceUID), "hospa") in by_sop  # kept apart, never merged
    assert not [c for c in conflicts if c.object_key.startswith("hospa/")
                and c.calling_ae == "HOSP_B"]
    for c in conflicts:  # each kept copy is there and decrypts
        assert node.node.core.fs.exists(f"{c.object_key}/original.dcm")
