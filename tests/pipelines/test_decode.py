"""Decoding every image file pydicom ships, compared with pydicom's own pixel_array."""

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, apply_modality_lut

from pipelines.decode import decode
from pipelines.errors import NotAnImage, UndecodableError
from pipelines.preprocess import preprocess
from pipelines.recipe import Recipe

ROOT = Path(pydicom.__file__).parent / "data" / "test_files"
NATIVE = Recipe(size=None, dtype="float32")


def _pydicom_images() -> list[Path]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(p for p in ROOT.rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(path, force=True)
                if "PixelData" in ds:
                    ds.pixel_array  # noqa: B018 - pydicom's own decoders decide the list
                    out.append(path)
            except Exception:
                continue
    return out


IMAGES = _pydicom_images()


def _expected(path: Path) -> np.ndarray:
    """Independently: pydicom's pixels, modality LUT / colour to luma, min-max per frame."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
        arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames") or 1)
    pi = ds.PhotometricInterpretation
    if pi == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.shape[-1] == 3 and ds.SamplesPerPixel == 3 or pi == "PALETTE COLOR":
        grey = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    else:
        grey = apply_modality_lut(arr, ds).astype(np.float64)
        if pi == "MONOCHROME1":
            grey = -grey
    grey = grey.reshape(frames, int(ds.Rows), int(ds.Columns))
    out = []
    for f in grey:
        span = f.max() - f.min()
        out.append((f - f.min()) / span if span else np.zeros_like(f))
    return np.stack(out)


def test_the_list_is_the_expected_one() -> None:
    assert len(IMAGES) >= 55


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_matches_pydicom_after_the_recipe(path: Path) -> None:
    prepared = preprocess(decode(path.read_bytes()), NATIVE)
    np.testing.assert_allclose(prepared.array, _expected(path), atol=2e-5)


def test_monochrome1_is_inverted() -> None:
    path = ROOT / "dicomdirtests/77654033/CR1/6154"
    decoded = decode(path.read_bytes())
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and decoded.facts.inverted
    raw = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    np.testing.assert_allclose(decoded.frames[0], raw.min() + raw.max() - raw)


def test_ct_gets_hounsfield_units() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    decoded = decode(Path(path).read_bytes())
    assert ds.RescaleIntercept != 0
    np.testing.assert_allclose(
        decoded.frames[0], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    facts = decoded.facts
    assert (facts.rows, facts.columns, facts.number_of_frames) == (128, 128, 1)
    assert facts.pixel_spacing is not None and facts.transfer_syntax == "1.2.840.10008.1.2.1"
    assert facts.to_dict()["photometric_interpretation"] == "MONOCHROME2"


def test_multi_frame_gives_a_stack() -> None:
    decoded = decode(Path(get_testdata_file("rtdose.dcm")).read_bytes())
    assert decoded.frames.shape == (15, 10, 10)
    prepared = preprocess(decoded, Recipe(size=32))
    assert prepared.array.shape == (15, 32, 32) and prepared.array.dtype == np.float16


def test_colour_comes_back_rgb_and_leaves_grey() -> None:
    decoded = decode(Path(get_testdata_file("examples_ybr_color.dcm")).read_bytes())
    assert decoded.is_colour and decoded.frames.shape == (30, 240, 320, 3)
    assert preprocess(decoded, Recipe(size=64)).array.shape == (30, 64, 64)


def test_palette_is_applied() -> None:
    decoded = decode(Path(get_testdata_file("examples_palette.dcm")).read_bytes())
    assert decoded.is_colour and decoded.facts.photometric_interpretation == "PALETTE COLOR"


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"])
def test_a_non_image_is_not_an_image(name: str) -> None:
    with pytest.raises(NotAnImage):
        decode(Path(get_testdata_file(name)).read_bytes())


@pytest.mark.parametrize(("name", "says"), [
    ("JPEG-lossy.dcm", "JPEG Extended"),
    ("MR_truncated.dcm", "less than expected"),
])
def test_undecodable_says_why(name: str, says: str) -> None:
    with pytest.raises(UndecodableError) as caught:
        decode(Path(get_testdata_file(name)).read_bytes())
    assert says in caught.value.reason
