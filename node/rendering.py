"""Rendered images of stored instances, for people: one frame as 8-bit JPEG or PNG.

Monochrome: modality LUT (CT in HU), then the window asked for, else the instance's first
VOI window, else its min-max; MONOCHROME1 inverted so that it looks as it should. Colour:
as decoded (RGB). Scaled to fit ``viewport`` (aspect kept), never enlarged beyond it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, pixel_array


@dataclass(frozen=True)
class Window:
    center: float
    width: float


def render(data: bytes, frame: int = 1, window: Window | None = None,
           viewport: tuple[int, int] | None = None, fmt: str = "jpeg",
           quality: int = 90) -> bytes:
    """Returns frame ``frame`` (1-based) of the Part-10 ``data`` encoded as ``fmt``
    (``jpeg`` or ``png``).

    Raises ValueError: no pixel data, a frame out of range, or pixels that cannot be decoded.
    """
    ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=False)
    if "PixelData" not in ds:
        raise ValueError("the instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= count:
        raise ValueError(f"frame numbers run from 1 to {count}")
    try:
        arr = pixel_array(io.BytesIO(data), index=frame - 1)
    except Exception as exc:
        raise ValueError(f"cannot decode the pixels: {type(exc).__name__}") from exc
    image = _to_8bit(ds, arr, window)
    pil = Image.fromarray(image)
    if viewport is not None:
        pil.thumbnail((max(1, viewport[0]), max(1, viewport[1])), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if fmt == "png":
        pil.save(out, format="PNG", compress_level=3)
    else:
        pil.convert("RGB" if pil.mode not in ("L", "RGB") else pil.mode).save(
            out, format="JPEG", quality=max(1, min(100, quality)))
    return out.getvalue()


def _to_8bit(ds: pydicom.Dataset, arr: np.ndarray, window: Window | None) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour, decoded to RGB
        if arr.dtype != np.uint8:
            top = float(arr.max()) or 1.0
            arr = (arr.astype(np.float64) * (255.0 / top)).clip(0, 255)
        return np.ascontiguousarray(arr[..., :3].astype(np.uint8))
    values = apply_modality_lut(arr, ds).astype(np.float64)
    window = window or _header_window(ds)
    if window is not None and window.width > 0:
        low = window.center - window.width / 2
        scaled = (values - low) / window.width
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    out = (scaled.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)
    return 255 - out if photometric == "MONOCHROME1" else out


def _header_window(ds: pydicom.Dataset) -> Window | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    except (TypeError, ValueError):
        return None
    return Window(c, w)
