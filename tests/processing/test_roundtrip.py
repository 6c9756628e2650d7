"""Every image pydicom ships, through the node and back: the AI input equals pydicom's pixels.

Each of pydicom's test files is stored (``Node.write``, the CLI ``import``, or C-STORE from
dcmtk's ``storescu``), processed by ``Worker.drain()``, and read back. The expected AI input
is computed here from pydicom alone, not from ``pipelines/``: modality LUT (monochrome),
palette LUT, RGB -> luma (BT.601), per-frame min-max onto [0, 1] (MONOCHROME1 reversed,
a constant frame all zeros). A node with a native-size float32 recipe must match it to
float32 rounding; the default recipe (512², float16, aspect kept) must keep its promises.

pydicom's files share SOP Instance UIDs (eight MR_small variants carry one UID), and a node
keeps a second file under a known UID as a conflict, not processed. So files are spread
over several nodes ("rounds"), none holding two files with the same UID.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from node.api import Node
from node.errors import IngestError
from node.index.records import InstanceRecord, State
from node.ingest import Outcome
from node.layout import PREVIEW
from node.processing.worker import Worker
from node.settings import ENV_PREFIX, Settings
from pipelines.dicom_seg import SEG_STORAGE
from pipelines.recipe import Recipe
from tests.fixtures.node import PYDICOM_FILES, RunningNode, make_settings, pydicom_test_files

Dcmtk = Callable[..., Any]

NATIVE_RECIPE = Recipe(name="native", size=None, dtype="float32")
NATIVE = {"recipes": {"native": {"size": "native", "dtype": "float32"}},
          "processing": {"recipe": "native"}}
TOLERANCE = 1e-5  # float32 arithmetic in the node against float64 here
LUMA = np.array([0.299, 0.587, 0.114])
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# What pydicom makes of a file; the node state each kind must end in.
IMAGE, NO_PIXELS, BROKEN, SEGMENTATION = "image", "no pixels", "broken", "segmentation"
# A DICOM SEG is not preprocessed: it labels its source images (none of pydicom's SEG files
# has its sources among the other files), or is undecodable when highdicom cannot read it.
STATES_OF = {IMAGE: {State.PROCESSED}, NO_PIXELS: {State.NOT_IMAGE},
             BROKEN: {State.UNDECODABLE}, SEGMENTATION: {State.LABELS, State.UNDECODABLE}}

# storescu proposes uncompressed syntaxes unless told which one the files use.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}
# Files dcmtk 3.6.7 cannot parse, so storescu cannot send: SC_rgb_jpeg.dcm's data set is
# implicit VR under an explicit VR syntax; the rtdose_rle files' elements are implicit VR (UN).
DCMTK_UNREADABLE = {"SC_rgb_jpeg.dcm", "rtdose_rle.dcm", "rtdose_rle_1frame.dcm"}


# -- what pydicom says about each file ---------------------------------------------------------

@dataclass(frozen=True, eq=False)  # compared by identity: it holds arrays
class Sample:
    """One of pydicom's files as pydicom reads it (``expected``: the AI input, for images)."""

    path: Path
    kind: str
    sop_uid: str
    transfer_syntax: str
    expected: np.ndarray | None = None
    grey: np.ndarray | None = None
    """The modality-LUT (luma for colour) values, frames first, before normalising."""
    photometric: str = ""
    samples_per_pixel: int = 1

    @property
    def name(self) -> str:
        return self.path.name


def read(source: Path | bytes) -> Sample:
    """Reads with ``force=True`` (pydicom's way to read a data set without a file meta)."""
    path = source if isinstance(source, Path) else Path("<bytes>")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(source if isinstance(source, Path) else io.BytesIO(source),
                                 force=True)
        except Exception:
            return Sample(path, BROKEN, path.name, "")
        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        uid = str(ds.get("SOPInstanceUID") or path.name)
        if not any(k in ds for k in PIXEL_KEYWORDS):
            return Sample(path, NO_PIXELS, uid, syntax)
        if str(ds.get("SOPClassUID", "")) == SEG_STORAGE:
            return Sample(path, SEGMENTATION, uid, syntax)
        try:
            arr = ds.pixel_array
        except Exception:
            return Sample(path, BROKEN, uid, syntax)
        grey = grey_values(ds, arr)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
        return Sample(path, IMAGE, uid, syntax, expected_input(grey, photometric), grey,
                      photometric, int(ds.get("SamplesPerPixel") or 1))


def grey_values(ds: pydicom.Dataset, arr: np.ndarray) -> np.ndarray:
    """float64 (frames, rows, cols): modality LUT for monochrome, luma of RGB or palette."""
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric == "PALETTE COLOR":
        values = apply_color_lut(arr, ds).astype(np.float64) @ LUMA
    elif int(ds.get("SamplesPerPixel") or 1) > 1:
        values = arr.astype(np.float64) @ LUMA  # pydicom gives RGB for YBR_* by default
    else:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    return values[np.newaxis] if int(ds.get("NumberOfFrames") or 1) == 1 else values


def expected_input(grey: np.ndarray, photometric: str) -> np.ndarray:
    """Per-frame min-max onto [0, 1]; MONOCHROME1 reversed (bright = low); constant -> 0."""
    frames = []
    for frame in grey:
        low, high = frame.min(), frame.max()
        if not high > low:
            frames.append(np.zeros_like(frame))
            continue
        scaled = (frame - low) / (high - low)
        frames.append(1.0 - scaled if photometric == "MONOCHROME1" else scaled)
    return np.stack(frames)


@cache
def survey() -> tuple[Sample, ...]:
    return tuple(read(path) for path in pydicom_test_files())


def images() -> list[Sample]:
    return [s for s in survey() if s.kind == IMAGE]


def rounds(samples: list[Sample]) -> list[list[Sample]]:
    """The samples spread so that no round holds two with the same SOP Instance UID."""
    out: list[list[Sample]] = []
    seen: Counter[str] = Counter()
    for sample in samples:
        index = seen[sample.sop_uid]
        seen[sample.sop_uid] += 1
        while len(out) <= index:
            out.append([])
        out[index].append(sample)
    return out


# -- what the node gives back -------------------------------------------------------------------

@dataclass(frozen=True)
class Got:
    """One instance as the node holds it after processing."""

    state: str
    description: dict[str, Any]
    output: np.ndarray | None
    preview: bytes | None


def collect(node: Node, rec: InstanceRecord) -> Got:
    try:
        output: np.ndarray | None = node.read_output(rec)
    except FileNotFoundError:
        output = None
    try:
        preview: bytes | None = node.core.fs.cat_file(f"{rec.object_key}/{PREVIEW}")
    except FileNotFoundError:
        preview = None
    return Got(rec.state, node.read_description(rec), output, preview)


@dataclass
class Imported:
    """The outcome of importing every file of the survey, per file name."""

    got: dict[str, Got]
    refused: dict[str, str]
    drained: Counter[str]


def import_and_drain(base: Path, config: dict[str, Any], samples: list[Sample]) -> Imported:
    """Stores each sample with ``Node.write`` (one node per round), drains, reads back."""
    result = Imported({}, {}, Counter())
    for i, batch in enumerate(rounds(samples)):
        node = Node.from_settings(make_settings(base / f"round{i}", config), create_keys=True)
        try:
            stored = {}
            for sample in batch:
                try:
                    written = node.write(sample.path.read_bytes(), via="import")
                except IngestError as exc:
                    result.refused[sample.name] = str(exc)
                    continue
                assert written.outcome is Outcome.STORED, (sample.name, written)
                stored[sample.name] = written.sop_uid
            result.drained += Worker(node.core).drain()
            records = {rec.sop_uid: rec for rec in node.ls()}
            for name, uid in stored.items():
                result.got[name] = collect(node, records[uid])
        finally:
            node.close()
    return result


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    """Every pydicom file imported into nodes whose recipe keeps native size, float32."""
    return import_and_drain(tmp_path_factory.mktemp("native"), NATIVE, list(survey()))


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    """Every decodable pydicom file imported into nodes with the default recipe."""
    return import_and_drain(tmp_path_factory.mktemp("default"), {}, images())


def mismatch(sample: Sample, output: np.ndarray | None) -> str | None:
    """Why ``output`` is not the expected native-size float32 input, or None if it is."""
    assert sample.expected is not None
    if output is None:
        return "no output"
    if output.dtype != np.float32 or output.shape != sample.expected.shape:
        return f"{output.dtype}{output.shape}, expected float32{sample.expected.shape}"
    err = float(np.abs(output.astype(np.float64) - sample.expected).max())
    return None if err <= TOLERANCE else f"max abs error {err:.3g}"


# -- the import path, native recipe ---------------------------------------------------------------

def test_pydicom_ships_enough_files_to_make_this_meaningful() -> None:
    kinds = Counter(s.kind for s in survey())
    assert kinds[IMAGE] >= 50, kinds
    assert kinds[NO_PIXELS] >= 5, kinds
    assert kinds[BROKEN] >= 3, kinds


def test_every_decodable_file_gives_pydicoms_pixels(native: Imported) -> None:
    refused = sorted(s.name for s in images() if s.name in native.refused)
    assert not refused, f"the node refused files pydicom decodes: {refused}"
    wrong = {}
    for sample in images():
        got = native.got[sample.name]
        if got.state != State.PROCESSED:
            wrong[sample.name] = f"state {got.state}: {got.description.get('processing')}"
        elif (why := mismatch(sample, got.output)) is not None:
            wrong[sample.name] = why
    assert not wrong, wrong
    assert native.drained[State.PROCESSED] == len(images())


def test_every_accepted_file_ends_in_the_state_its_pixels_call_for(native: Imported) -> None:
    counts: Counter[str] = Counter()
    for sample in survey():
        if sample.name in native.refused:
            assert sample.kind != IMAGE
            continue
        got = native.got[sample.name]
        section = got.description["processing"]
        assert got.state in STATES_OF[sample.kind], (sample.name, section)
        assert section["state"] == got.state, sample.name
        counts[got.state] += 1
    assert counts[State.PROCESSED] >= 50, counts
    assert counts[State.NOT_IMAGE] >= 5, counts
    assert counts[State.UNDECODABLE] >= 3, counts
    assert sum(counts.values()) + len(native.refused) == len(survey())
    assert set(native.drained) <= {State.PROCESSED, State.NOT_IMAGE, State.UNDECODABLE,
                                   State.LABELS}
    assert kinds_seen(SEGMENTATION) >= 1  # pydicom ships DICOM SEG files: they went through


def kinds_seen(kind: str) -> int:
    return sum(1 for s in survey() if s.kind == kind)


def test_files_that_are_not_processed_have_no_outputs_and_say_why(native: Imported) -> None:
    for name, got in native.got.items():
        if got.state == State.PROCESSED:
            continue
        assert got.output is None and got.preview is None, name
        section = got.description["processing"]
        assert "recipe_id" not in section and "output" not in section, name
        if got.state == State.UNDECODABLE:
            assert isinstance(section["reason"], str) and section["reason"].strip(), name


def test_the_description_tells_how_each_output_was_made(native: Imported) -> None:
    for sample in images():
        got = native.got[sample.name]
        section = got.description["processing"]
        assert got.output is not None
        assert section["recipe_id"] == NATIVE_RECIPE.recipe_id
        assert section["recipe"] == NATIVE_RECIPE.to_mapping()
        assert section["output"] == {"object": "output.npy", "shape": list(got.output.shape),
                                     "dtype": "float32"}, sample.name
        assert section["preview"] == PREVIEW
        facts = section["decode"]
        frames, rows, cols = got.output.shape
        assert facts["transfer_syntax"] == sample.transfer_syntax, sample.name
        assert (facts["rows"], facts["columns"], facts["number_of_frames"]) == (
            rows, cols, frames), sample.name
        assert facts["photometric_interpretation"] == sample.photometric, sample.name
        assert facts["samples_per_pixel"] == sample.samples_per_pixel, sample.name
        assert sample.grey is not None
        span = max(1.0, float(sample.grey.max() - sample.grey.min()))
        stats = section["stats"]
        for key, value in (("min", sample.grey.min()), ("max", sample.grey.max()),
                           ("mean", sample.grey.mean())):
            assert abs(stats[key] - float(value)) <= 1e-4 * span, (sample.name, key, stats)
        verdict = section["filter"]
        assert isinstance(verdict["blank"], bool) and isinstance(verdict["reason"], str)
        assert isinstance(verdict["score"], int | float), sample.name


def test_every_preview_is_a_grey_png_of_the_first_frame(native: Imported) -> None:
    for sample in images():
        got = native.got[sample.name]
        assert got.preview is not None and got.output is not None
        image = Image.open(io.BytesIO(got.preview))
        assert image.format == "PNG" and image.mode == "L", sample.name
        rows, cols = got.output.shape[1:]
        assert max(image.size) <= 256 and image.size[0] / image.size[1] == pytest.approx(
            cols / rows, rel=0.05, abs=1 / 256), sample.name
        pixels = np.asarray(image, dtype=np.float64)
        if (image.height, image.width) == (rows, cols):  # not scaled down: exact
            expected = np.rint(got.output[0].astype(np.float64) * 255.0)
            assert np.abs(pixels - expected).max() <= 1, sample.name
        else:
            assert abs(pixels.mean() - 255.0 * float(got.output[0].mean())) <= 2, sample.name


# -- the import path, default recipe --------------------------------------------------------------

def test_default_recipe_gives_512_squares_of_float16_in_unit_range(default: Imported) -> None:
    recipe = Recipe()
    for sample in images():
        got = default.got[sample.name]
        assert sample.expected is not None
        assert got.state == State.PROCESSED, sample.name
        out = got.output
        assert out is not None
        frames, rows, cols = sample.expected.shape
        assert out.shape == (frames, 512, 512) and out.dtype == np.float16, sample.name
        assert not np.isnan(out).any(), sample.name
        assert out.min() >= 0.0 and out.max() <= 1.0, sample.name
        assert got.description["processing"]["recipe_id"] == recipe.recipe_id

        # Aspect kept: the image scaled to fit, centred, zeros around it.
        scale = 512 / max(rows, cols)
        high, wide = min(512, max(1, round(rows * scale))), min(512, max(1, round(cols * scale)))
        top, left = (512 - high) // 2, (512 - wide) // 2
        content = out[:, top:top + high, left:left + wide].astype(np.float64)
        padding = out.astype(np.float64)
        padding[:, top:top + high, left:left + wide] = 0.0
        assert not padding.any(), f"{sample.name}: non-zero padding"
        if (rows, cols) == (512, 512):
            assert np.abs(content - sample.expected).max() <= 1e-3, sample.name  # float16
        else:  # resampling keeps each frame's mean brightness
            means = np.abs(content.mean(axis=(1, 2)) - sample.expected.mean(axis=(1, 2)))
            assert means.max() <= 0.01, (sample.name, means.max())


# -- MONOCHROME1 and constant frames, which pydicom's decodable files lack -------------------------

def variant(name: str, change: Callable[[pydicom.Dataset], None]) -> bytes:
    """A pydicom file with ``change`` applied and a new SOP Instance UID."""
    ds = pydicom.dcmread(PYDICOM_FILES / name)
    change(ds)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def monochrome1(ds: pydicom.Dataset) -> None:
    ds.PhotometricInterpretation = "MONOCHROME1"


def one_constant_frame(ds: pydicom.Dataset) -> None:
    pixels = ds.pixel_array.copy()
    pixels[1] = pixels[1].max()
    ds.PixelData = pixels.tobytes()


def all_constant(ds: pydicom.Dataset) -> None:
    pixels = ds.pixel_array.copy()
    pixels[...] = 1234
    ds.PixelData = pixels.tobytes()


def narrow_band_far_from_zero(ds: pydicom.Dataset) -> None:
    """75 grey levels just under 2**32: float32 (24-bit mantissa) cannot tell them apart."""
    pixels = ds.pixel_array.astype(np.uint32)
    pixels = (pixels - pixels.min()) // 1000 + np.uint32(4_000_000_000)
    ds.PixelData = pixels.tobytes()


@pytest.mark.parametrize(("name", "change"), [
    ("CT_small.dcm", monochrome1), ("rtdose.dcm", monochrome1),
    ("rtdose.dcm", one_constant_frame), ("CT_small.dcm", all_constant),
    ("rtdose.dcm", narrow_band_far_from_zero),
], ids=["CT-MONOCHROME1", "multiframe-MONOCHROME1", "one-constant-frame", "constant-image",
        "32-bit-narrow-band"])
def test_inverted_and_constant_images_follow_the_same_rule(
        name: str, change: Callable[[pydicom.Dataset], None],
        settings_factory: Callable[..., Settings]) -> None:
    data = variant(name, change)
    sample = read(data)
    assert sample.kind == IMAGE and sample.expected is not None
    node = Node.from_settings(settings_factory(NATIVE), create_keys=True)
    try:
        uid = node.write(data).sop_uid
        assert Worker(node.core).drain() == Counter({State.PROCESSED: 1})
        [rec] = [r for r in node.ls() if r.sop_uid == uid]
        got = collect(node, rec)
    finally:
        node.close()
    assert mismatch(sample, got.output) is None, mismatch(sample, got.output)
    assert got.description["processing"]["decode"]["inverted"] is (change is monochrome1)
    # the statistics describe the values as stored (after the modality LUT), not inverted
    stored = pydicom.dcmread(io.BytesIO(data))
    values = np.asarray(pydicom.pixels.apply_modality_lut(stored.pixel_array, stored),
                        dtype=np.float64)
    stats = got.description["processing"]["stats"]
    span = max(float(values.max() - values.min()), 1.0)
    assert abs(stats["mean"] - float(values.mean())) <= 1e-4 * span
    assert (stats["min"], stats["max"]) == pytest.approx((values.min(), values.max()))


# -- C-STORE from dcmtk: the entry point must not matter ----------------------------------------

def test_c_store_gives_the_same_outputs_as_import(
        native: Imported, dimse_factory: Callable[..., RunningNode], dcmtk: Dcmtk) -> None:
    unreadable: list[str] = []  # files dcmtk itself cannot parse, so cannot send
    compared = 0
    for i, batch in enumerate(rounds(images())):
        running = dimse_factory(NATIVE, name=f"dimse{i}")
        by_syntax: dict[str, list[Sample]] = {}
        for sample in batch:
            by_syntax.setdefault(sample.transfer_syntax, []).append(sample)
        sent = []
        for syntax, group in by_syntax.items():  # one association per transfer syntax
            assert syntax in STORESCU_PROPOSE, f"storescu cannot propose {syntax}"
            result = dcmtk("storescu", "-R", "-nh", "-aet", "STORESCU",
                           "-aec", running.ae_title, STORESCU_PROPOSE[syntax],
                           "127.0.0.1", str(running.port), *(str(s.path) for s in group))
            skipped = [s for s in group if f"file: {s.path}" in result.stderr]
            unreadable += [s.name for s in skipped]
            assert "Store Failed" not in result.stderr, result.stderr[-3000:]
            assert result.returncode == 0 or len(skipped) == len(group), result.stderr[-3000:]
            sent += [s for s in group if s not in skipped]
        node = running.node
        Worker(node.core).drain()
        records = {rec.sop_uid: rec for rec in node.ls()}
        assert len(records) == len(sent)
        for sample in sent:
            got = collect(node, records[sample.sop_uid])
            want = native.got[sample.name]
            assert got.state == State.PROCESSED, (sample.name, got.description["processing"])
            assert got.description["received"]["via"] == "dimse"
            assert got.output is not None and want.output is not None, sample.name
            assert got.output.dtype == want.output.dtype, sample.name
            assert np.array_equal(got.output, want.output), sample.name
            assert got.preview == want.preview, sample.name
            for key in ("decode", "stats", "recipe_id"):
                assert got.description["processing"][key] == \
                    want.description["processing"][key], (sample.name, key)
            compared += 1
    assert set(unreadable) <= DCMTK_UNREADABLE, unreadable
    assert compared == len(images()) - len(unreadable) >= 50


# -- the CLI: import, worker --once, get --kind ---------------------------------------------------

CLI_FILES = ("CT_small.dcm", "rtdose.dcm", "examples_palette.dcm", "SC_rgb_jpeg_dcmtk.dcm",
             "JPEG-lossy.dcm", "test-SR.dcm")


@pytest.fixture
def cli_home(settings_factory: Callable[..., Settings], tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, list[str]]:
    """A node home and the CLI options that name it (no SUPPORT_NODE_* from the shell)."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    settings = settings_factory(NATIVE, name="cli")  # writes tmp_path/cli.toml
    return settings, ["--home", str(tmp_path / "cli"), "--config", str(tmp_path / "cli.toml")]


def cli(*args: str | Path) -> Any:
    from node.cli import app
    return CliRunner().invoke(app, [str(a) for a in args])


def test_get_writes_outputs_previews_and_descriptions_that_load(
        cli_home: tuple[Settings, list[str]], tmp_path: Path) -> None:
    settings, where = cli_home
    paths = [PYDICOM_FILES / name for name in CLI_FILES]
    result = cli("import", *paths, *where)
    assert result.exit_code == 0, result.output
    result = cli("worker", "--once", *where)
    assert result.exit_code == 0, result.output
    assert "4 processed" in result.output and "1 not_image" in result.output \
        and "1 undecodable" in result.output, result.output

    written: dict[str, dict[str, Path]] = {}
    for kind, suffix in (("output", ".npy"), ("preview", ".png"), ("description", ".json")):
        out = tmp_path / kind
        result = cli("get", "default", "--kind", kind, "--out", out, *where)
        if kind == "description":
            assert result.exit_code == 0, result.output
            assert "wrote 6 files" in result.output
        else:  # the undecodable image has no output: a failure; the report, by nature
            assert result.exit_code == 1, result.output
            assert "wrote 4 files" in result.output
            assert f"1 instance has no {kind} (1 undecodable)" in result.output
            assert "skipped 1 instance with no pixels to derive from (1 not_image)" \
                in result.output
        assert "Traceback" not in result.output
        for path in out.rglob(f"*{suffix}"):
            written.setdefault(path.name[: -len(suffix)], {})[kind] = path

    node = Node.from_settings(settings)
    try:
        records = list(node.ls())
        assert len(records) == len(CLI_FILES)
        for rec in records:
            files = written[rec.sop_uid]
            description = node.read_description(rec)
            with files["description"].open() as fh:
                assert json.load(fh) == description
            if rec.state != State.PROCESSED:
                assert set(files) == {"description"}, rec.sop_uid
                continue
            output = node.read_output(rec)
            loaded = np.load(files["output"], allow_pickle=False)
            assert loaded.dtype == output.dtype == np.float32
            assert np.array_equal(loaded, output)
            sample = read(node.read_original(rec))
            assert mismatch(sample, loaded) is None
            with Image.open(files["preview"]) as image:
                assert image.format == "PNG" and image.mode == "L"
                assert max(image.size) <= 256
                preview = np.asarray(image)
            assert files["preview"].read_bytes() == node.core.fs.cat_file(
                f"{rec.object_key}/{PREVIEW}")
            if preview.shape == output.shape[1:]:
                assert np.array_equal(preview, np.rint(output[0] * 255).astype(np.uint8))
    finally:
        node.close()
