"""The worker through the Python API and the CLI: outputs, verdicts, states, recipes,
the shared filter model, reprocess, reindex, failures."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from node.api import Node
from node.cli import app
from node.index.jobs import JobQueue
from node.index.records import State
from node.layout import ORIGINAL, OUTPUT, PREVIEW
from node.processing import shared_filter
from node.processing.worker import Worker
from node.settings import Settings
from pipelines import synthetic

runner = CliRunner()


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def blank_ct(value: int = 0) -> Dataset:
    """A CT slice that is air everywhere: what a scanner sends for an empty scout."""
    ds = next(synthetic.ct_series(1, size=128, seed=9))
    ds.PixelData = np.full((128, 128), value, dtype=np.int16).tobytes()
    return ds


def text_sr() -> Dataset:
    """A Basic Text SR: no pixel data, nothing to preprocess."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "SR-1", "SR"
    return ds


@pytest.fixture
def small_node(settings_factory: Callable[..., Settings]) -> Node:
    """A node whose default recipe makes 64² outputs (fast) and that learns from 32 images."""
    settings = settings_factory({"recipes": {"small": {"size": 64, "version": 2}},
                                 "processing": {"recipe": "small", "filter_min_images": 32}})
    node = Node.from_settings(settings, create_keys=True)
    yield node
    node.close()


def by_uid(node: Node) -> dict[str, object]:
    return {rec.sop_uid: rec for rec in node.ls()}


def test_every_kind_of_object_gets_the_state_a_user_expects(node_api: Node) -> None:
    ct = list(synthetic.ct_series(2, size=128, seed=1))
    blank, sr = blank_ct(), text_sr()
    for ds in (*ct, blank, sr):
        node_api.write(encode(ds))
    assert {r.state for r in node_api.ls()} == {State.QUEUED}

    counts = Worker(node_api.core).drain()

    assert counts == {State.PROCESSED: 3, State.NOT_IMAGE: 1}
    recs = by_uid(node_api)
    for ds in ct:
        rec = recs[ds.SOPInstanceUID]
        assert (rec.state, rec.blank) == (State.PROCESSED, False)  # type: ignore[attr-defined]
        out = node_api.read_output(rec)  # type: ignore[arg-type]
        assert out.shape == (1, 512, 512) and out.dtype == np.float16
        assert 0.0 <= float(out.min()) < 0.01 and 0.99 < float(out.max()) <= 1.0  # eq. 1
        doc = node_api.read_description(rec)  # type: ignore[arg-type]
        p = doc["processing"]
        assert p["recipe_id"] == rec.recipe_id == node_api.core.settings.recipe().recipe_id
        assert p["decode"]["rows"] == 128 and p["decode"]["transfer_syntax"] == \
            ExplicitVRLittleEndian
        assert p["decode"]["pixel_spacing"] == [3.9062, 3.9062]
        assert p["stats"]["min"] == pytest.approx(-1024 + 0, abs=100)  # HU, not raw values
        assert p["filter"]["blank"] is False
        assert p["output"] == {"object": OUTPUT, "shape": [1, 512, 512], "dtype": "float16"}
    rec = recs[blank.SOPInstanceUID]
    assert (rec.state, rec.blank) == (State.PROCESSED, True)  # type: ignore[attr-defined]
    assert node_api.read_description(rec)["processing"]["filter"]["reason"] == "constant image"
    rec = recs[sr.SOPInstanceUID]
    assert (rec.state, rec.blank) == (State.NOT_IMAGE, None)  # type: ignore[attr-defined]
    assert node_api.read_description(rec)["processing"]["state"] == State.NOT_IMAGE
    with pytest.raises(FileNotFoundError):
        node_api.read_output(rec)  # type: ignore[arg-type]


def test_the_preview_is_a_small_png_of_the_output(node_api: Node) -> None:
    ds = next(synthetic.ct_series(1, size=128, seed=2))
    node_api.write(encode(ds))
    Worker(node_api.core).drain()
    [rec] = node_api.ls()
    png = Image.open(io.BytesIO(node_api.core.fs.cat_file(f"{rec.object_key}/{PREVIEW}")))
    assert png.mode == "L" and png.size == (256, 256)
    assert np.asarray(png).std() > 10  # anatomy, not a flat grey


def test_undecodable_pixels_are_stored_described_and_explained(node_api: Node) -> None:
    ds = next(synthetic.ct_series(1, size=64, seed=3))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # says JPEG, holds no JPEG
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    node_api.write(encode(ds))
    assert Worker(node_api.core).drain() == {State.UNDECODABLE: 1}
    [rec] = node_api.ls()
    doc = node_api.read_description(rec)
    assert rec.state == State.UNDECODABLE and rec.blank is None
    assert "could not be decoded" in doc["processing"]["reason"]
    assert node_api.read_original(rec) == encode(ds)  # the original is kept, exactly


def test_ls_hides_or_shows_only_blank_images(node_api: Node) -> None:
    real, blank = next(synthetic.ct_series(1, size=64, seed=4)), blank_ct(7)
    for ds in (real, blank):
        node_api.write(encode(ds))
    Worker(node_api.core).drain()
    assert {r.sop_uid for r in node_api.ls(blank=False)} == {real.SOPInstanceUID}
    assert {r.sop_uid for r in node_api.ls(blank=True)} == {blank.SOPInstanceUID}
    assert len(list(node_api.ls())) == 2


def test_the_filter_model_is_shared_saved_and_reloaded(small_node: Node) -> None:
    for ds in synthetic.ct_series(40, size=64, seed=5):
        small_node.write(encode(ds))
    first = Worker(small_node.core, "host:1")
    first.drain()
    assert first.filter.filter.n_learnt + len(first.filter.filter._pending) == 40
    assert first.filter.filter.trained
    fs = small_node.core.fs
    assert fs.exists(shared_filter.key(first.filter.version))

    restarted = Worker(small_node.core, "host:2")  # a restart reloads the latest model
    assert restarted.filter.version == first.filter.version
    assert restarted.filter.filter.state_bytes() == first.filter.filter.state_bytes()

    # two workers learning at once: neither overwrites the other's images
    a, b = Worker(small_node.core, "host:3"), Worker(small_node.core, "host:4")
    for worker, seed in ((a, 6), (b, 7)):
        for ds in synthetic.ct_series(5, size=64, seed=seed):
            small_node.write(encode(ds))
        worker.drain()
    merged = Worker(small_node.core, "host:5").filter.filter
    assert merged.n_learnt + len(merged._pending) == 50


def test_reprocess_with_another_recipe_leaves_originals_alone(
        small_node: Node, settings_factory: Callable[..., Settings]) -> None:
    series = list(synthetic.ct_series(3, size=64, seed=8))
    for ds in series:
        small_node.write(encode(ds))
    Worker(small_node.core).drain()
    home = small_node.core.settings.home
    config = home.parent / f"{home.name}.toml"
    config.write_text(config.read_text() + '\n[recipes.native32]\nsize = "native"\n'
                      'dtype = "float32"\nwindow = [40, 400]\n')
    before = {r.sop_uid: (r.sha256, small_node.read_original(r)) for r in small_node.ls()}
    one = series[0]

    result = runner.invoke(app, ["reprocess", "default", one.PatientID, "--recipe", "native32",
                                 "--home", str(home), "--config", str(config)])

    assert result.exit_code == 0, result.output
    assert "queued 3 instances" in result.output and "3 processed" in result.output
    for rec in small_node.ls():
        assert (rec.sha256, small_node.read_original(rec)) == before[rec.sop_uid]
        assert rec.recipe_id is not None and rec.recipe_id.startswith("native32@1#")
        out = small_node.read_output(rec)
        assert out.shape == (1, 64, 64) and out.dtype == np.float32
        doc = small_node.read_description(rec)
        assert doc["processing"]["window"] == [40.0, 400.0]
        assert doc["original"]["sha256"] == rec.sha256
    unknown = runner.invoke(app, ["reprocess", "--recipe", "nope", "--home", str(home),
                                  "--config", str(config)])
    assert unknown.exit_code == 2 and "no recipe called 'nope'" in unknown.output


def test_reindex_restores_results_and_requeues_what_was_not_processed(node_api: Node) -> None:
    done, blank, waiting = (next(synthetic.ct_series(1, size=64, seed=s)) for s in (10, 11, 12))
    for ds in (done, blank_ct(3)):
        node_api.write(encode(ds))
    Worker(node_api.core).drain()
    node_api.write(encode(waiting))
    states = {r.sop_uid: (r.state, r.blank, r.recipe_id) for r in node_api.ls()}
    home = node_api.core.settings.home

    result = runner.invoke(app, ["reindex", "--home", str(home)])

    assert result.exit_code == 0, result.output
    assert {r.sop_uid: (r.state, r.blank, r.recipe_id) for r in node_api.ls()} == states
    counts = JobQueue(node_api.core.catalog).counts()
    assert counts.queue_depth == 1 and counts.blank == 1
    assert Worker(node_api.core).drain() == {State.PROCESSED: 1}


def test_a_tampered_original_fails_with_a_message_and_is_retried_then_given_up(
        settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory({"processing": {"max_attempts": 2}})
    node = Node.from_settings(settings, create_keys=True)
    try:
        ds = next(synthetic.ct_series(1, size=64, seed=13))
        node.write(encode(ds))
        [rec] = node.ls()
        path = Path(settings.store.url.removeprefix("file://")) / rec.object_key / ORIGINAL
        raw = bytearray(path.read_bytes())
        raw[-40] ^= 1
        path.write_bytes(bytes(raw))
        queue = JobQueue(node.core.catalog)
        worker = Worker(node.core)
        [job] = queue.take(1, 60, 2)
        assert worker.process(job) == "retry"
        [job] = queue.take(1, 60, 2) or [None]  # due only after a short wait
    finally:
        node.close()
    if job is not None:
        pytest.fail("a failed job must wait before it is tried again")

    home = settings.home
    config = home.parent / f"{home.name}.toml"
    with Node.from_settings(settings) as node:  # pretend the wait is over
        node.core.catalog.transaction("due now", lambda conn: conn.exec_driver_sql(
            "UPDATE jobs SET lease_until = NULL"))
    result = runner.invoke(app, ["worker", "--once", "--home", str(home), "--config",
                                 str(config)])
    assert result.exit_code == 1
    assert f"failed {ds.SOPInstanceUID}: IntegrityError" in result.output
    status = runner.invoke(app, ["status", "--json", "--home", str(home), "--config",
                                 str(config)])
    doc = json.loads(status.stdout)
    assert doc["failed"] == 1 and doc["queue_depth"] == 0 and doc["processed"] == 0
    assert ds.PatientID not in result.output + status.output  # no PHI in messages


def test_status_counts_what_a_user_asks_about(node_api: Node) -> None:
    for ds in (*synthetic.ct_series(2, size=64, seed=14), blank_ct(), text_sr()):
        node_api.write(encode(ds))
    home = str(node_api.core.settings.home)
    before = json.loads(runner.invoke(app, ["status", "--json", "--home", home]).stdout)
    assert (before["instances"], before["queue_depth"], before["processed"]) == (4, 4, 0)
    Worker(node_api.core).drain()
    after = json.loads(runner.invoke(app, ["status", "--json", "--home", home]).stdout)
    assert (after["queue_depth"], after["processed"], after["filtered"], after["not_image"],
            after["failed"]) == (0, 3, 1, 1, 0)
    table = runner.invoke(app, ["status", "--home", home])
    assert table.exit_code == 0 and "queue depth" in table.output


def test_serve_keeps_segmentation_and_pretraining_apart_from_processing(
        settings_factory: Callable[..., Settings]) -> None:
    from node.processes import ProcessingPool

    plain = settings_factory({"processing": {"workers": 2}}, name="plain")
    Node.from_settings(plain, create_keys=True).close()
    with ProcessingPool(plain) as pool:  # an AI worker too: the AI page queues segmentations
        # and the spool's uploader, always
        assert pool._kinds == [("process",), ("process",), ("segment", "pretrain"),
                               ("upload",)]
    none = settings_factory({"processing": {"workers": 0}}, name="none")
    with ProcessingPool(none) as pool:
        assert pool._kinds == [("upload",)]
    ai = settings_factory({"segment": {"model": "unet/1"}}, name="ai")
    Node.from_settings(ai, create_keys=True).close()
    with ProcessingPool(ai) as pool:
        assert pool._kinds == [("process",), ("segment", "pretrain"), ("upload",)]
        assert all(p.is_alive() for p in pool._procs)
    assert not any(p.is_alive() for p in pool._procs)


def test_worker_kinds_are_checked(node_api: Node) -> None:
    home = str(node_api.core.settings.home)
    bad = runner.invoke(app, ["worker", "--once", "--kinds", "process,train", "--home", home])
    assert bad.exit_code == 2 and "--kinds" in bad.output
    node_api.write(encode(next(synthetic.ct_series(1, size=64, seed=30))))
    only_ai = runner.invoke(app, ["worker", "--once", "--kinds", "segment", "--home", home])
    assert only_ai.exit_code == 0 and "nothing queued" in only_ai.output
    done = runner.invoke(app, ["worker", "--once", "--kinds", "process", "--home", home])
    assert done.exit_code == 0 and "1 processed" in done.output


def test_the_log_says_what_became_of_each_instance_once(
        small_node: Node, caplog: pytest.LogCaptureFixture) -> None:
    node = small_node
    ct = next(synthetic.ct_series(1, size=64, seed=3))
    for ds in (ct, blank_ct(), text_sr()):
        node.write(encode(ds))
    worker = Worker(node.core, watch_every=0.0)
    with caplog.at_level("INFO", logger="support_node.processing"):
        worker.drain()
        # as at a start long after the last arrival: every series is complete now
        worker.segment = dataclasses.replace(worker.segment, quiet_seconds=0)
        assert len(worker.watch_series()) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert f"processed {ct.SOPInstanceUID}" in lines
    assert any(line.endswith("(flagged blank)") for line in lines)
    assert any("(not an image)" in line for line in lines)
    assert not any(line.endswith(": processed") or ": not_image" in line for line in lines)
    assert not any("series complete" in line for line in lines)  # no segment.model: no news


def test_a_full_disk_postpones_processing_instead_of_failing_it(node_api: Node) -> None:
    """Outputs that cannot be written for lack of space are not the instance's fault: the
    job waits and is done once there is room, never marked failed after its attempts (the
    fault suite's full disk left 334 of 400 instances failed for good)."""
    import errno as errno_

    from node.errors import StoreError

    node_api.write(encode(next(synthetic.ct_series(1, size=64, seed=41))))
    fs = node_api.core.fs
    real = fs.pipe_files

    def full(objects: dict[str, bytes], **kwargs: object) -> None:
        try:
            raise OSError(errno_.ENOSPC, "No space left on device")
        except OSError as exc:
            raise StoreError("store write failed") from exc

    fs.pipe_files = full  # type: ignore[method-assign]
    worker = Worker(node_api.core)
    for _ in range(5):  # more than max_attempts (3)
        worker.step()
        with node_api.core.catalog.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE jobs SET lease_until = NULL")  # no 30 s wait here
    assert [rec.state for rec in node_api.ls()] == [State.QUEUED]
    fs.pipe_files = real  # type: ignore[method-assign]
    worker.drain()
    assert [rec.state for rec in node_api.ls()] == [State.PROCESSED]
