"""Decoded frames -> the AI input: grey, windowed, normalised to [0, 1], resized, float16.

Order per frame: colour to grey (luma), then either a VOI window (values clipped to
[c - w/2, c + w/2] and mapped linearly onto [0, 1], i.e. eq. 1 with the window's bounds as min
and max) or min-max normalisation over the frame (the paper's eq. 1; a constant frame gives
zeros), then the resize (area/bilinear, aspect kept with zero padding, or stretched).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.decode import Decoded
from pipelines.recipe import Recipe

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class PixelStats:
    """Statistics of the modality-LUT values (luma for colour) over all frames."""

    min: float
    max: float
    mean: float
    std: float


@dataclass(frozen=True)
class Prepared:
    """``array``: (frames, size, size) in [0, 1] of the recipe's dtype (native size if None)."""

    array: np.ndarray
    stats: PixelStats
    recipe_id: str
    window: tuple[float, float] | None
    """The window actually applied, or None (min-max per frame)."""


def grey(decoded: Decoded) -> np.ndarray:
    """The frames as float32 grey, (frames, rows, cols): RGB becomes luma (BT.601)."""
    if decoded.is_colour:
        return decoded.frames @ LUMA
    return decoded.frames


def normalised(decoded: Decoded, recipe: Recipe) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Grey, windowed or min-max normalised frames at native size, float32 in [0, 1].

    Returns the frames and the window applied (None when min-max per frame was used).
    """
    frames = grey(decoded)
    window = decoded.facts.header_window if recipe.window == "header" else recipe.window
    if isinstance(window, tuple):
        low = window[0] - window[1] / 2.0
        out = (frames - frames.dtype.type(low)) / frames.dtype.type(window[1])
        return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False), window
    return np.stack([minmax(f) for f in frames]), None


def minmax(frame: np.ndarray) -> np.ndarray:
    """The paper's eq. 1, (x - min) / (max - min), as float32; a constant frame gives zeros."""
    if frame.dtype != np.float64:  # float64 (wide pixels) is normalised before narrowing
        frame = frame.astype(np.float32, copy=False)
    low, high = float(frame.min()), float(frame.max())
    if not high > low:
        return np.zeros(frame.shape, dtype=np.float32)
    kind = frame.dtype.type
    return ((frame - kind(low)) * kind(1.0 / (high - low))).astype(np.float32, copy=False)


def resize(frame: np.ndarray, size: int, keep_aspect: bool = True) -> np.ndarray:
    """``frame`` as a (size, size) float32 image: centred and zero-padded when ``keep_aspect``.

    Same size returns the frame itself; downscaling averages (Pillow's antialiasing bilinear).
    """
    new_rows, new_cols, top, left = placement(frame.shape[0], frame.shape[1], size, keep_aspect)
    scaled = _scale(frame, new_rows, new_cols)
    if (new_rows, new_cols) == (size, size):
        return scaled
    out = np.zeros((size, size), dtype=np.float32)
    out[top:top + new_rows, left:left + new_cols] = scaled
    return out


def placement(rows: int, cols: int, size: int, keep_aspect: bool) -> tuple[int, int, int, int]:
    """Where ``resize`` puts a rows × cols frame in its size × size output:
    (new_rows, new_cols, top, left)."""
    if not keep_aspect:
        return size, size, 0, 0
    scale = size / max(rows, cols)
    new_rows = min(size, max(1, round(rows * scale)))
    new_cols = min(size, max(1, round(cols * scale)))
    return new_rows, new_cols, (size - new_rows) // 2, (size - new_cols) // 2


def resize_labels(labels: np.ndarray, size: int | None, keep_aspect: bool = True) -> np.ndarray:
    """A label map (rows, cols) of small integers placed exactly as ``resize`` places its
    image (nearest neighbour, zero padding): the mask of an output. ``size`` None: as is."""
    labels = np.asarray(labels, dtype=np.uint8)
    if size is None:
        return labels
    new_rows, new_cols, top, left = placement(labels.shape[0], labels.shape[1], size,
                                              keep_aspect)
    out = np.zeros((size, size), dtype=np.uint8)
    scaled = Image.fromarray(labels).resize((new_cols, new_rows), Image.Resampling.NEAREST)
    out[top:top + new_rows, left:left + new_cols] = np.asarray(scaled)
    return out


def restore_labels(labels: np.ndarray, rows: int, cols: int, keep_aspect: bool = True
                   ) -> np.ndarray:
    """The inverse of ``resize_labels``: a label map on an output brought back to the
    original rows × cols (padding cropped, nearest neighbour), e.g. for a DICOM SEG."""
    labels = np.asarray(labels, dtype=np.uint8)
    size = labels.shape[0]
    if labels.shape == (rows, cols):
        return labels
    new_rows, new_cols, top, left = placement(rows, cols, size, keep_aspect)
    inner = labels[top:top + new_rows, left:left + new_cols]
    return np.asarray(Image.fromarray(inner).resize((cols, rows), Image.Resampling.NEAREST))


def _scale(frame: np.ndarray, rows: int, cols: int) -> np.ndarray:
    if frame.shape == (rows, cols):
        return frame.astype(np.float32, copy=False)
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.float32))  # mode "F"
    return np.asarray(image.resize((cols, rows), Image.Resampling.BILINEAR), dtype=np.float32)


def stats(decoded: Decoded) -> PixelStats:
    """min, max, mean and std of the modality-LUT (grey) values over all frames."""
    values = grey(decoded)
    low, high, mean = float(values.min()), float(values.max()), float(values.mean())
    if decoded.facts.inverted:  # MONOCHROME1 frames are (min + max) - stored: undo it
        mean = low + high - mean
    return PixelStats(low, high, mean, float(values.std()))


def preprocess(decoded: Decoded, recipe: Recipe) -> Prepared:
    """The AI input for ``decoded`` under ``recipe``: a stack of frames with its stats.

    Raises nothing for any decoded image; the output never holds NaN.
    """
    frames, window = normalised(decoded, recipe)
    if recipe.size is not None:
        frames = np.stack([resize(f, recipe.size, recipe.keep_aspect) for f in frames])
    array = np.clip(frames, 0.0, 1.0).astype(recipe.dtype)
    return Prepared(array, stats(decoded), recipe.recipe_id, window)


def preview_png(prepared: Prepared, frame: int = 0, max_size: int = 256) -> bytes:
    """An 8-bit grey PNG of one frame, no side longer than ``max_size``, for people.

    Raises ``IndexError`` when the frame does not exist.
    """
    image = np.asarray(prepared.array[frame], dtype=np.float32)
    rows, cols = image.shape
    scale = min(1.0, max_size / max(rows, cols))
    if scale < 1.0:
        image = _scale(image, max(1, round(rows * scale)), max(1, round(cols * scale)))
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    # uint8 gives mode "L"; light compression: a preview is made for every image, read rarely
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
