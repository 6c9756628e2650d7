"""Labels (DICOM SEG received like any instance, a folder of masks) and the datasets that
read outputs and masks from the encrypted store."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from node.ai import dataset, labels
from node.api import Node
from node.cli import app
from node.index.records import State
from node.processing.worker import Worker
from node.settings import Settings
from pipelines import dicom_seg, synthetic
from pipelines.preprocess import resize_labels

runner = CliRunner()


def encode(ds) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def node(settings_factory: Callable[..., Settings]) -> Node:
    settings = settings_factory({"recipes": {"small": {"size": 32}},
                                 "processing": {"recipe": "small"}})
    node = Node.from_settings(settings, create_keys=True)
    yield node
    node.close()


def lesion(shape: tuple[int, int], top: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[top:top + 10, 20:36] = 1
    return mask


def test_a_received_seg_labels_its_source_images(node: Node) -> None:
    series = list(synthetic.ct_series(3, size=64, seed=1))
    for ds in series:
        node.write(encode(ds))
    masks = [lesion((64, 64), 5 + 10 * i) for i in range(3)]
    seg = dicom_seg.make(series, masks, ["lesion"], manufacturer="Radiology annotations")
    node.write(dicom_seg.encode(seg))
    counts = Worker(node.core).drain()
    assert counts == {State.PROCESSED: 3, State.LABELS: 1}
    recs = {r.sop_uid: r for r in node.ls()}
    for ds, mask in zip(series, masks, strict=True):
        rec = recs[ds.SOPInstanceUID]
        assert rec.labels == f"seg:{seg.SOPInstanceUID}"
        assert np.array_equal(labels.read(node.core, rec)[0], mask)
        assert node.read_description(rec)["labels"]["classes"] == [0, 1]
    seg_rec = recs[seg.SOPInstanceUID]
    doc = node.read_description(seg_rec)["processing"]
    assert seg_rec.state == State.LABELS and doc["missing"] == []
    assert sorted(doc["matched"]) == sorted(ds.SOPInstanceUID for ds in series)


def test_a_folder_of_masks_is_imported_by_sop_uid(node: Node, tmp_path: Path) -> None:
    series = list(synthetic.ct_series(4, size=64, seed=2))
    for ds in series:
        node.write(encode(ds))
    folder = tmp_path / "masks"
    folder.mkdir()
    png = lesion((64, 64), 8) * 255
    Image.fromarray(png).save(folder / f"{series[0].SOPInstanceUID}.png")
    np.save(folder / f"{series[1].SOPInstanceUID}.npy", lesion((64, 64), 30) * 2)
    np.save(folder / f"{series[2].SOPInstanceUID}.npy", np.zeros((32, 32), np.uint8))
    np.save(folder / "1.2.3.999.npy", np.zeros((64, 64), np.uint8))
    home = str(node.core.settings.home)
    config = str(Path(home).parent / "home.toml")

    result = runner.invoke(app, ["labels", "import", str(folder), "--home", home,
                                 "--config", config])

    assert result.exit_code == 1, result.output
    assert "2 imported" in result.output and "1 refused" in result.output
    assert "1 unknown" in result.output and "does not fit image" in result.output
    recs = {r.sop_uid: r for r in node.ls()}
    assert np.array_equal(labels.read(node.core, recs[series[0].SOPInstanceUID])[0],
                          lesion((64, 64), 8))
    assert labels.read(node.core, recs[series[1].SOPInstanceUID]).max() == 2
    assert recs[series[2].SOPInstanceUID].labels is None


def test_datasets_leave_blank_images_out_and_split_by_patient(node: Node) -> None:
    patients = [synthetic.Patient(patient_id=f"P{i}", name=f"Doe^{i}") for i in range(5)]
    for i, patient in enumerate(patients):
        for ds in synthetic.ct_study(patient, series=1, per_series=2, size=64, seed=i):
            node.write(encode(ds))
    blank = next(synthetic.ct_series(1, size=64, seed=9))
    blank.PixelData = np.zeros((64, 64), np.int16).tobytes()
    node.write(encode(blank))
    Worker(node.core).drain()

    chosen = dataset.select(node)
    assert len(chosen) == 10 and blank.SOPInstanceUID not in {r.sop_uid for r in chosen}
    assert len(dataset.select(node, include_blank=True)) == 11
    train, val = dataset.split_by_patient(chosen, 0.4, seed=3)
    assert {r.patient_key for r in train}.isdisjoint({r.patient_key for r in val})
    assert len(val) == 4 and len(train) == 6
    assert dataset.split_by_patient(chosen, 0.4, seed=3) == (train, val)  # reproducible
    a, b = dataset.manifest(train), dataset.manifest(list(reversed(train)))
    assert a.digest == b.digest and a.digest != dataset.manifest(val).digest
    assert {i["sha256"] for i in a.to_dict()["items"]} == {r.sha256 for r in train}

    data = dataset.OutputDataset(node, train)  # the node select took, as the docstring shows
    assert len(data) == 6
    assert len(dataset.OutputDataset(node.core, train)) == 6  # or its core, as before
    x = data[0]
    assert x.shape == (1, 32, 32) and x.dtype.is_floating_point
    assert np.allclose(x.numpy()[0], node.read_output(train[0])[0].astype(np.float32))


def test_labelled_items_pair_each_frame_with_its_mask(node: Node) -> None:
    series = list(synthetic.ct_series(2, size=64, seed=4))
    for ds in series:
        node.write(encode(ds))
    Worker(node.core).drain()
    rec = next(r for r in node.ls() if r.sop_uid == series[0].SOPInstanceUID)
    labels.store(node.core, rec, lesion((64, 64), 12), "import")

    chosen = dataset.select(node, labelled=True)
    assert [r.sop_uid for r in chosen] == [rec.sop_uid]
    image, mask = dataset.OutputDataset(node.core, chosen, labels=True)[0]
    assert image.shape == (1, 32, 32) and mask.shape == (32, 32) and mask.dtype.is_signed
    assert np.array_equal(mask.numpy(), resize_labels(lesion((64, 64), 12), 32))
    assert 0 < int(mask.sum()) < 32 * 32


def test_a_seg_made_by_this_node_is_a_prediction_not_labels(node: Node) -> None:
    series = list(synthetic.ct_series(2, size=64, seed=5))
    for ds in series:
        node.write(encode(ds))
    seg = dicom_seg.make(series, [lesion((64, 64), 5)] * 2, ["lesion"])  # ours
    node.write(dicom_seg.encode(seg))
    assert Worker(node.core).drain() == {State.PROCESSED: 2, State.NOT_IMAGE: 1}
    assert all(r.labels is None for r in node.ls())
