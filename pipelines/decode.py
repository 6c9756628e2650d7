"""Part-10 bytes -> pixel frames as float32, plus the facts a description needs.

Monochrome frames carry modality-LUT values (CT in Hounsfield units), in MONOCHROME2 sense
(MONOCHROME1 is inverted about its own min + max); colour and palette images come back as RGB.
Raises ``NotAnImage`` (no pixel data) or ``UndecodableError`` (with the reason).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import UID

from pipelines.errors import NotAnImage, UndecodableError

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class DecodeFacts:
    """What was decoded: original geometry and encoding, for the description."""

    transfer_syntax: str
    transfer_syntax_name: str
    photometric_interpretation: str
    rows: int
    columns: int
    number_of_frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_spacing: tuple[float, float] | None
    modality: str | None
    inverted: bool
    """True when MONOCHROME1 values were inverted into MONOCHROME2 sense."""
    header_window: tuple[float, float] | None
    """The header's first (WindowCenter, WindowWidth), in the same sense as the frames."""

    def to_dict(self) -> dict[str, Any]:
        """The facts as JSON-ready values."""
        d = asdict(self)
        for key in ("pixel_spacing", "header_window"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d


@dataclass(frozen=True)
class Decoded:
    """``frames``: (frames, rows, cols) for monochrome or (frames, rows, cols, 3) RGB; float32,
    or float64 for pixels wider than 16 bits (or a modality LUT that float32 cannot hold)."""

    frames: np.ndarray
    facts: DecodeFacts

    @property
    def is_colour(self) -> bool:
        """True when ``frames`` holds RGB samples."""
        return self.frames.ndim == 4


def decode(data: bytes, max_pixels: int | None = None) -> Decoded:
    """Decodes one Part-10 instance (a file meta header is optional).

    Returns the frames and facts. Raises ``NotAnImage`` when the object has no pixel data and
    ``UndecodableError`` when it cannot be parsed, its pixels cannot be decoded, or it has
    more than ``max_pixels`` pixels (rows × columns × frames × samples: checked from the
    header, before any pixel is decoded).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(io.BytesIO(data), force=True)
        except Exception as exc:
            raise UndecodableError(f"not a readable DICOM object: {exc}") from exc
        if not any(k in ds for k in PIXEL_KEYWORDS):
            raise NotAnImage("no pixel data")
        if max_pixels is not None:
            _check_size(ds, max_pixels)
        return _decode_pixels(ds)


def _check_size(ds: Dataset, max_pixels: int) -> None:
    try:
        pixels = (int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames") or 1)
                  * int(ds.get("SamplesPerPixel") or 1))
    except Exception as exc:
        raise UndecodableError(f"no usable image size in the header: {_first_lines(exc)}"
                               ) from exc
    if pixels > max_pixels:
        raise UndecodableError(f"too large to decode: {pixels} pixels, more than the "
                               f"{max_pixels} allowed (processing.max_pixels)")


def _decode_pixels(ds: Dataset) -> Decoded:
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else UID("")
    ts_name = ts.name if ts else "unknown"
    try:
        arr = ds.pixel_array
        photometric = str(ds.PhotometricInterpretation).strip().upper()
        rows, cols = int(ds.Rows), int(ds.Columns)
        nframes = int(ds.get("NumberOfFrames") or 1)
        spp = int(ds.get("SamplesPerPixel") or 1)
    except Exception as exc:
        raise UndecodableError(f"{ts_name} pixel data could not be decoded: "
                               f"{_first_lines(exc)}") from exc
    if nframes == 1 and arr.ndim == (3 if spp > 1 else 2):
        arr = arr[np.newaxis]
    inverted = False
    window = _header_window(ds)
    # float32 holds every value of up to 24 bits exactly; wider pixels (32-bit integers,
    # float and double pixel data) keep float64, so nearby large values stay apart.
    wide = np.float64 if arr.dtype.itemsize >= 4 else np.float32
    if photometric == "PALETTE COLOR":
        frames = apply_color_lut(arr, ds).astype(np.float32)
    elif spp > 1:
        # pydicom hands back RGB for YBR_* (it converts by default)
        frames = arr.astype(wide)
    else:
        frames = np.asarray(apply_modality_lut(arr, ds))
        frames = frames.astype(np.float64 if wide is np.float64 or _beyond_float32(frames)
                               else np.float32, copy=False)
        if photometric == "MONOCHROME1":
            pivot = float(frames.min()) + float(frames.max())
            frames = pivot - frames
            inverted = True
            if window is not None:
                window = (pivot - window[0], window[1])
    facts = DecodeFacts(
        transfer_syntax=str(ts), transfer_syntax_name=ts_name,
        photometric_interpretation=photometric, rows=rows, columns=cols,
        number_of_frames=int(frames.shape[0]), samples_per_pixel=spp,
        bits_allocated=int(ds.get("BitsAllocated") or 0),
        bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
        pixel_spacing=_spacing(ds), modality=str(ds.Modality) if "Modality" in ds else None,
        inverted=inverted, header_window=window,
    )
    return Decoded(np.ascontiguousarray(frames), facts)


def _beyond_float32(values: np.ndarray) -> bool:
    """True when float32 (24-bit mantissa) would merge distinct values: large magnitudes."""
    if values.size == 0 or values.dtype.kind not in "iuf":
        return False
    return bool(max(abs(float(values.min())), abs(float(values.max()))) >= 2.0 ** 24)


def _first_lines(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first(value: Any) -> float:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _header_window(ds: Dataset) -> tuple[float, float] | None:
    try:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return (center, width) if width > 0 else None


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds[keyword].value
            return (float(value[0]), float(value[1]))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return None
