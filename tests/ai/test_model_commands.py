"""The model library end to end through the CLI on a tiny labelled phantom set: pretrain,
train from the library, evaluate, segment (masks + a DICOM SEG back in the study), and the
series-complete trigger that segments exactly once."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from node.ai.runs import PREDICTION
from node.api import Node
from node.cli import app
from node.index.records import State
from node.processing.worker import Worker
from node.settings import Settings
from pipelines import dicom_seg, phantoms, synthetic

runner = CliRunner()
TINY = ["--features", "4,8,16", "--batch-size", "8"]


def encode(ds) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A node with 4 patients x 6 labelled 32² phantom slices, processed, each patient's
    annotations sent as a DICOM SEG; pretrained (unet/1) and trained (fcn/1) by the CLI."""
    from tests.fixtures.node import make_settings

    home = tmp_path_factory.mktemp("models") / "home"
    settings = make_settings(home, {"recipes": {"small": {"size": 32}},
                                    "processing": {"recipe": "small"}})
    config = str(home.parent / "home.toml")
    data = phantoms.phantoms(24, size=32, seed=3)
    series = []
    with Node.from_settings(settings, create_keys=True) as node:
        for p in range(4):
            patient = synthetic.Patient(patient_id=f"LES-{p}", name=f"Lesion^{p}")
            part = slice(6 * p, 6 * p + 6)
            images, seg = synthetic.labelled_series(data.hu[part], data.lesion[part], patient)
            for ds in images:
                node.write(encode(ds))
            node.write(dicom_seg.encode(seg))
            series.append(images)
        counts = Worker(node.core).drain()
    assert counts == {State.PROCESSED: 24, State.LABELS: 4}
    common = ["--home", str(home), "--config", config]
    pre = runner.invoke(app, ["pretrain", "--arch", "unet", "--clusters", "4", "--epochs", "2",
                              "--pca-dim", "8", *TINY, *common])
    assert pre.exit_code == 0, pre.output
    trained = runner.invoke(app, ["train", "--arch", "fcn", "--init", "library:unet/1",
                                  "--epochs", "2", "--val-fraction", "0.25", *TINY, *common])
    assert trained.exit_code == 0, trained.output
    return {"home": home, "common": common, "series": series, "settings": settings,
            "pretrain": pre.output, "train": trained.output}


def test_pretraining_saves_an_encoder_with_a_card(labelled: dict) -> None:  # type: ignore[type-arg]
    assert "saved as unet/1" in labelled["pretrain"]
    assert "round 2 of 2 (epoch 2): NMI to the previous" in labelled["pretrain"]
    shown = runner.invoke(app, ["library", "show", "unet/1", *labelled["common"]])
    card = json.loads(shown.stdout)
    assert card["kind"] == "pretrain" and card["data"]["count"] == 24
    assert card["pretrain"]["clusters"] == 4 and len(card["history"]) == 2
    assert card["net"]["features"] == [4, 8, 16] and not card["stopped"]


def test_pretrain_prints_each_round_once_and_counts_epochs(labelled: dict) -> None:  # type: ignore[type-arg]
    output = labelled["pretrain"]
    rounds = re.findall(r"^round (\d) of 2 \(epoch (\d)\): NMI to the previous", output, re.M)
    assert rounds == [("1", "1"), ("2", "2")]  # once each, not again in a table after
    assert "saved as unet/1: 2 rounds of clustering over 2 of 2 epochs" in output


def test_model_commands_take_their_defaults_from_the_config(labelled: dict,  # type: ignore[type-arg]
                                                            tmp_path: Path) -> None:
    # One default, in the config: [pretrain] clusters / epochs / size, [train] size / epochs;
    # a configured size above the outputs' (32² here) is not an upscale.
    config = tmp_path / "node.toml"
    config.write_text(Path(labelled["common"][3]).read_text()
                      + "\n[pretrain]\nclusters = 3\nepochs = 1\nsize = 128\n"
                      + "[train]\nsize = 16\nepochs = 1\n")
    common = ["--home", labelled["common"][1], "--config", str(config)]
    pre = runner.invoke(app, ["pretrain", "--arch", "fcn", "--pca-dim", "4", *TINY, *common])
    assert pre.exit_code == 0, pre.output
    assert "at the outputs' size, 3 clusters" in pre.output
    entry = re.search(r"saved as (fcn/\d+)", pre.output).group(1)  # type: ignore[union-attr]
    card = json.loads(runner.invoke(app, ["library", "show", entry, *common]).stdout)
    assert card["pretrain"]["clusters"] == 3 and card["pretrain"]["epochs"] == 1
    assert card["size"] is None
    trained = runner.invoke(app, ["train", "--arch", "fcn", *TINY, *common])
    assert trained.exit_code == 0, trained.output
    assert "at 16²" in trained.output
    entry = re.search(r"saved as (fcn/\d+)", trained.output).group(1)  # type: ignore[union-attr]
    card = json.loads(runner.invoke(app, ["library", "show", entry, *common]).stdout)
    assert card["size"] == 16 and card["train"]["epochs"] == 1


def test_training_starts_from_the_library_and_records_its_data(labelled: dict) -> None:  # type: ignore[type-arg]
    assert "saved as fcn/1" in labelled["train"]
    card = json.loads(runner.invoke(app, ["library", "show", "fcn/1",
                                          *labelled["common"]]).stdout)
    assert card["init"] == "unet/1" and card["kind"] == "segment"
    assert card["data"]["train"]["count"] == 18 and card["data"]["validation"]["count"] == 6
    assert 0.0 <= card["metrics"]["val_dice"] <= 1.0 and len(card["history"]) == 2
    # With no hierarchy: only the patient held out from training (the validation split)
    held = runner.invoke(app, ["evaluate", "--model", "fcn/1", *labelled["common"]])
    assert held.exit_code == 0, held.output
    assert re.search(r"fcn/1: Dice \d\.\d{4} on 6 labelled images of 1 patient "
                     r"\(patients held out from fcn/1's training\)", held.stdout)
    result = json.loads(runner.invoke(app, ["evaluate", "--model", "fcn/1", "--json",
                                            *labelled["common"]]).stdout)
    assert result["images"] == 6 and result["patients"] == 1
    assert "fcn/1 (train)" not in result["overlap"]
    assert result["overlap"]["fcn/1 (validation)"] == 1
    # Given a hierarchy: the images given, with a warning for those it has seen
    out = runner.invoke(app, ["evaluate", "--model", "fcn/1", "--json", "default",
                              *labelled["common"]])
    result = json.loads(out.stdout)
    assert result["images"] == 24 and 0.0 <= result["dice"] <= 1.0
    # every evaluated patient was in the pretraining data, and in training or validation:
    # the command says the Dice is not a fair test
    assert result["overlap"]["unet/1 (data)"] == 4
    assert result["overlap"]["fcn/1 (train)"] + result["overlap"]["fcn/1 (validation)"] >= 4
    assert "not a fair test" in out.stderr
    helped = runner.invoke(app, ["evaluate", "--help"]).output
    assert "default: the size the model was trained at" in " ".join(
        re.sub(r"[│╭╮╰╯─]", " ", helped).split())


def test_segment_writes_masks_and_a_seg_the_pacs_can_pull(labelled: dict) -> None:  # type: ignore[type-arg]
    images = labelled["series"][0]
    study = images[0].StudyInstanceUID
    out = runner.invoke(app, ["segment", "default", "LES-0", "--model", "fcn/1",
                              *labelled["common"]])
    assert out.exit_code == 0, out.output
    assert "segmented 6 images in 1 series; 1 DICOM SEG stored" in out.output
    with Node.from_settings(labelled["settings"]) as node:
        in_study = list(node.ls(None, None, study))
        [seg_rec] = [r for r in in_study if r.modality == "SEG"
                     and r.series_uid != images[0].SeriesInstanceUID
                     and r.sop_class_uid == dicom_seg.SEG_STORAGE and r.calling_ae == ""
                     and node.read_description(r)["received"]["via"] == "segment"]
        seg = hd.seg.segread(io.BytesIO(node.read_original(seg_rec)))
        refs = {str(uid) for _, _, uid in seg.get_source_image_uids()}
        assert refs == {ds.SOPInstanceUID for ds in images}
        assert pydicom.dcmread(io.BytesIO(node.read_original(seg_rec))).Modality == "SEG"
        for rec in in_study:
            if rec.sop_uid in refs:
                mask = node.core.fs.cat_file(
                    f"{rec.object_key}/{PREDICTION.format(arch='fcn', version=1)}")
                assert np.load(io.BytesIO(mask)).shape == (1, 32, 32)
        Worker(node.core).drain()  # the SEG is processed like any instance...
        again = node.core.catalog.get_instance(seg_rec.sop_uid)
        assert again is not None and again.state == State.NOT_IMAGE  # ...never as labels


def test_get_exports_label_maps_and_predictions(labelled: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    common = labelled["common"]
    images = labelled["series"][1]  # LES-1: 6 labelled slices and their SEG
    got = runner.invoke(app, ["get", "default", "LES-1", "--kind", "labels", "--out",
                              str(tmp_path / "labels"), *common])
    assert got.exit_code == 0, got.output
    assert "wrote 6 files" in got.stdout
    assert "skipped 1 instance with no pixels to derive from (1 labels)" in got.stderr
    files = sorted((tmp_path / "labels").rglob("*.labels.npy"))
    assert {p.name for p in files} == {f"{ds.SOPInstanceUID}.labels.npy" for ds in images}
    assert any(np.load(p).any() for p in files)  # the SEG's lesions, at 32²
    assert all(np.load(p).shape == (1, 32, 32) for p in files)

    none_yet = runner.invoke(app, ["get", "default", "LES-1", "--kind", "prediction",
                                   "--out", str(tmp_path / "none"), *common])
    assert none_yet.exit_code == 0 and "wrote 0 files" in none_yet.stdout
    assert "6 instances have no prediction (6 processed)" in none_yet.stderr
    assert runner.invoke(app, ["segment", "default", "LES-1", "--model", "fcn/1",
                               *common]).exit_code == 0
    predicted = runner.invoke(app, ["get", "default", "LES-1", "--kind", "prediction",
                                    "--model", "fcn/1", "--out", str(tmp_path / "p"),
                                    *common])
    assert predicted.exit_code == 0, predicted.output
    names = {p.name for p in (tmp_path / "p").rglob("*.npy")}
    assert names == {f"{ds.SOPInstanceUID}.prediction-fcn-1.npy" for ds in images}
    every = runner.invoke(app, ["get", "default", "LES-1", "--kind", "prediction", "--out",
                                str(tmp_path / "all"), *common])
    assert {p.name for p in (tmp_path / "all").rglob("*.npy")} == names
    assert every.exit_code == 0
    wrong = runner.invoke(app, ["get", "default", "--model", "fcn/1", *common])
    assert wrong.exit_code == 2 and "--kind prediction" in wrong.output


def test_a_complete_series_is_segmented_exactly_once(
        labelled: dict, settings_factory: Callable[..., Settings], tmp_path: Path) -> None:  # type: ignore[type-arg]
    from node.ai.library import Library

    settings = settings_factory({"recipes": {"small": {"size": 32}},
                                 "processing": {"recipe": "small"},
                                 "segment": {"model": "fcn/2", "quiet_seconds": 1}})
    with Node.from_settings(labelled["settings"]) as source:
        exported = Library(source.core.fs, source.core.catalog).export("fcn/1",
                                                                              tmp_path)
    data = phantoms.phantoms(5, size=32, seed=11)
    images, _ = synthetic.labelled_series(data.hu, data.lesion)
    with Node.from_settings(settings, create_keys=True) as node:
        library = Library(node.core.fs, node.core.catalog)
        library.import_(exported)  # fcn/1
        library.import_(exported)  # fcn/2: the configured model
        for ds in images:
            node.write(encode(ds))
        worker = Worker(node.core, watch_every=0.0)
        assert worker.watch_series() == []  # still arriving
        worker.drain()
        time.sleep(1.2)
        assert worker.watch_series() == [images[0].SeriesInstanceUID]
        # the series is segmented; its SEG, stored through ingest, is processed in turn
        assert worker.drain() == {"segmented": 1, State.NOT_IMAGE: 1}
        assert worker.watch_series() == []
        restarted = Worker(node.core, watch_every=0.0)
        time.sleep(1.2)
        segs = [r for r in node.ls() if r.modality == "SEG"]
        # the SEG's own series completes too, but results are never segmented
        assert restarted.watch_series() == [segs[0].series_uid]
        assert restarted.drain() == {}
        assert len(segs) == 1


def test_every_n_new_images_start_one_pretraining(
        settings_factory: Callable[..., Settings]) -> None:
    from node.ai.library import Library

    settings = settings_factory({"recipes": {"small": {"size": 32}},
                                 "processing": {"recipe": "small"},
                                 "pretrain": {"every": 4, "clusters": 2, "epochs": 1,
                                              "size": 0, "arch": "fcn"}})
    with Node.from_settings(settings, create_keys=True) as node:
        worker = Worker(node.core, watch_every=0.0)
        for ds in synthetic.ct_series(3, size=32, seed=21):
            node.write(encode(ds))
        worker.drain()
        worker.watch_series()
        assert worker.drain() == {}  # 3 < 4: nothing yet
        node.write(encode(next(synthetic.ct_series(1, size=32, seed=22))))
        worker.drain()
        worker.watch_series()
        worker.watch_series()  # a second look queues nothing more
        assert worker.drain() == {"pretrained": 1}
        entries = Library(node.core.fs, node.core.catalog).entries()
        assert [(e.id, e.kind, e.card["data"]["count"]) for e in entries] == [
            ("fcn/1", "pretrain", 4)]
        worker.watch_series()
        assert worker.drain() == {}
