"""Segmentation of images a DICOM SEG is hard to make for: no Frame of Reference UID (a SEG
with a derived one), no geometry at all (label maps, and a one-line "no DICOM SEG" note);
and segmentation jobs that fail show in ``status`` with their reason."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from node.api import Node
from node.cli import app
from node.index.series_watch import queue_segmentation
from node.layout import prediction_name
from node.processing.worker import Worker
from pipelines import dicom_seg, phantoms, synthetic

runner = CliRunner()


def _encode(ds: Dataset) -> bytes:
    return dicom_seg.encode(ds)


def _without(images: list[Dataset], *names: str) -> list[Dataset]:
    for ds in images:
        for name in names:
            delattr(ds, name)
    return images


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A node (32² recipe, one try per job) with a tiny FCN trained on 2 labelled patients."""
    from tests.fixtures.node import make_settings

    home = tmp_path_factory.mktemp("seg") / "home"
    settings = make_settings(home, {"recipes": {"small": {"size": 32}},
                                    "processing": {"recipe": "small", "max_attempts": 1}})
    data = phantoms.phantoms(8, size=32, seed=5)
    with Node.from_settings(settings, create_keys=True) as node:
        for p in range(2):
            patient = synthetic.Patient(patient_id=f"LAB-{p}")
            part = slice(4 * p, 4 * p + 4)
            images, seg = synthetic.labelled_series(data.hu[part], data.lesion[part], patient)
            for ds in [*images, seg]:
                node.write(_encode(ds))
        Worker(node.core).drain()
    common = ["--home", str(home), "--config", str(home.parent / "home.toml")]
    result = runner.invoke(app, ["train", "--arch", "fcn", "--epochs", "1", "--features",
                                 "4,8,16", "--val-fraction", "0.5", *common])
    assert result.exit_code == 0, result.output
    return {"settings": settings, "common": common}


def _store(trained: dict[str, Any], patient_id: str, *missing: str) -> list[Dataset]:
    data = phantoms.phantoms(3, size=32, seed=9)
    images, _ = synthetic.labelled_series(data.hu, data.lesion,
                                          synthetic.Patient(patient_id=patient_id))
    images = _without(images, *missing)
    with Node.from_settings(trained["settings"]) as node:
        for ds in images:
            node.write(_encode(ds))
        Worker(node.core).drain()
    return images


def test_images_without_a_frame_of_reference_get_a_seg_with_a_derived_one(
        trained: dict[str, Any]) -> None:
    images = _store(trained, "NOFOR-1", "FrameOfReferenceUID")
    out = runner.invoke(app, ["segment", "default", "NOFOR-1", "--model", "fcn/1",
                              *trained["common"]])
    assert out.exit_code == 0, out.output
    assert "segmented 3 images in 1 series; 1 DICOM SEG stored" in out.stdout
    assert "no Frame of Reference UID" in out.stderr and "derived" in out.stderr
    with Node.from_settings(trained["settings"]) as node:
        [seg_rec] = [r for r in node.ls(None, "NOFOR-1") if r.modality == "SEG"]
        seg = hd.seg.segread(io.BytesIO(node.read_original(seg_rec)))
        assert {str(u) for _, _, u in seg.get_source_image_uids()} == {
            ds.SOPInstanceUID for ds in images}
        assert seg.FrameOfReferenceUID
        first = node.core.catalog.get_instance(images[0].SOPInstanceUID)
        assert first is not None
        # the stored original is untouched: still no Frame of Reference UID
        original = pydicom.dcmread(io.BytesIO(node.read_original(first)))
        assert "FrameOfReferenceUID" not in original


def test_images_without_any_geometry_get_label_maps_and_a_one_line_refusal(
        trained: dict[str, Any]) -> None:
    images = _store(trained, "NOGEO-1", "FrameOfReferenceUID", "ImagePositionPatient",
                    "ImageOrientationPatient", "PixelSpacing")
    out = runner.invoke(app, ["segment", "default", "NOGEO-1", "--model", "fcn/1",
                              *trained["common"]])
    assert out.exit_code == 0, out.output
    assert "segmented 3 images in 1 series; 0 DICOM SEG stored" in out.stdout
    [note] = [line for line in out.stderr.splitlines() if "no DICOM SEG" in line]
    assert "Frame of Reference" in note and "Traceback" not in out.output
    with Node.from_settings(trained["settings"]) as node:
        rec = node.core.catalog.get_instance(images[0].SOPInstanceUID)
        assert rec is not None
        mask = np.load(io.BytesIO(node.core.fs.cat_file(
            f"{rec.object_key}/{prediction_name('fcn/1')}")))
        assert mask.shape == (1, 32, 32)


def test_a_failed_segmentation_job_shows_in_status_with_its_reason(
        trained: dict[str, Any]) -> None:
    images = _store(trained, "FAIL-1")
    series = images[0].SeriesInstanceUID
    with Node.from_settings(trained["settings"]) as node:
        queue_segmentation(node.core.catalog, series, "unet/99")  # not in the library
        assert Worker(node.core).drain() == {"failed": 1}
    shown = runner.invoke(app, ["status", *trained["common"]])
    assert shown.exit_code == 0, shown.output
    [row] = [x.split() for x in shown.stdout.splitlines() if "segmentations failed" in x]
    assert row[-1] == "1"
    [line] = [x for x in shown.stderr.splitlines() if "segmentation of series" in x]
    assert series in line and "unet/99" in line
    doc = json.loads(runner.invoke(app, ["status", "--json", *trained["common"]]).stdout)
    assert doc["failed_segment"] == 1
    assert any(e["kind"] == "segment" and e["target"] == series for e in doc["errors"])


def test_dicom_seg_make_derives_the_same_frame_of_reference_on_every_run(
        tmp_path: Path) -> None:
    data = phantoms.phantoms(2, size=32, seed=1)
    images, _ = synthetic.labelled_series(data.hu, data.lesion)
    images = _without(images, "FrameOfReferenceUID")
    a = dicom_seg.make(images, list(data.lesion), ["lesion"])
    b = dicom_seg.make(images, list(data.lesion), ["lesion"])
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert all("FrameOfReferenceUID" not in ds for ds in images)
    with pytest.raises(dicom_seg.CannotMakeSegError, match="^no DICOM SEG: ") as refused:
        dicom_seg.make(_without(images, "ImagePositionPatient"), list(data.lesion),
                       ["lesion"])
    assert "\n" not in str(refused.value)
