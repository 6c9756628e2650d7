"""Labelled CT-like 2-D phantoms for segmentation: organs in a body, lesions with their masks.

Each slice is an axial abdomen in Hounsfield units: air, a body ellipse with a fat rim, soft
tissue, liver, spleen, two kidneys, aorta and a vertebra, each placed, sized and turned a
little differently per image. Lesions are ellipses with semi-axes of 5 to 11 % of the image
width (3 to 7 pixels at 64), shrunk until they cover at most 40 % of their host organ (liver,
spleen or a kidney), 50 to 90 HU above or below it, like hyper- and hypodense lesions. The
kidneys and aorta have HU like some lesions', so intensity alone does not segment them. The
image is smoothed a little (partial volume), then gets a smooth texture and white noise (sigma
6 to 15 HU). About ``1 - lesion_rate`` of the images have no lesion.

Image ``i`` of ``phantoms(n, seed=s)`` depends only on ``(s, i)``, so a set's first images are
the same whatever ``n`` is. :func:`to_unit` maps HU to the [0, 1] input of the networks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from pipelines.preprocess import minmax

ORGANS: tuple[str, ...] = (
    "air", "body", "liver", "spleen", "kidney", "aorta", "vertebra",
)
"""Names of the values of :attr:`Phantom.organs` (0 = air, 1 = body: fat and soft tissue)."""

CT_WINDOW: tuple[float, float] = (40.0, 400.0)
"""Soft-tissue window (centre, width) in HU: the header window of ``pipelines.synthetic``."""

_HU = {"air": -1000.0, "fat": -100.0, "soft": 40.0, "liver": 60.0, "spleen": 45.0,
       "kidney": 150.0, "aorta": 180.0, "vertebra": 700.0}
# Organ: (centre u, centre v, semi-axis u, semi-axis v) in the body's frame (unit ellipse).
_LAYOUT = {
    "liver": (-0.35, -0.10, 0.42, 0.45),
    "spleen": (0.50, -0.15, 0.20, 0.20),
    "kidney": (-0.33, 0.30, 0.11, 0.20),
    "kidney_r": (0.33, 0.30, 0.11, 0.20),
    "aorta": (0.07, 0.30, 0.07, 0.09),
    "vertebra": (0.0, 0.60, 0.15, 0.20),
}
_LESION_HOSTS = ("liver", "spleen", "kidney")
_MIN_LESION_PIXELS = 4
_MAX_LESION_SHARE = 0.4


@dataclass(frozen=True)
class Phantom:
    """One slice: ``hu`` float32 (H, W); ``lesion`` uint8 0/1; ``organs`` uint8 per ORGANS."""

    hu: np.ndarray
    lesion: np.ndarray
    organs: np.ndarray

    def label_map(self, with_organs: bool = False) -> np.ndarray:
        """uint8 labels: the lesion mask, or with organs ORGANS' values and lesion = len(ORGANS)."""
        if not with_organs:
            return self.lesion.copy()
        return np.where(self.lesion > 0, len(ORGANS), self.organs).astype(np.uint8)


@dataclass(frozen=True)
class Phantoms:
    """A set: ``hu`` float32 (N, H, W), ``lesion`` uint8 (N, H, W), ``organs`` uint8 (N, H, W)."""

    hu: np.ndarray
    lesion: np.ndarray
    organs: np.ndarray

    def __len__(self) -> int:
        return len(self.hu)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float,
             angle: float = 0.0) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - cu, v - cv
    return ((c * du + s * dv) / au) ** 2 + ((-s * du + c * dv) / av) ** 2 < 1.0


def phantom(
    size: int = 64,
    rng: np.random.Generator | int | None = None,
    *,
    lesion_rate: float = 0.7,
    max_lesions: int = 3,
) -> Phantom:
    """One labelled slice of ``size`` x ``size`` pixels (``rng``: a Generator or a seed).

    With probability ``lesion_rate`` it has 1 to ``max_lesions`` lesions (fewer if one would
    cover under 4 pixels of its organ), else none. Raises ValueError for ``size < 16``.
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng(rng)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size - 0.5
    # The body's frame: rotated, shifted and scaled so the body is the unit disc.
    angle = rng.uniform(-0.15, 0.15)
    cx, cy = rng.uniform(-0.02, 0.02, 2)
    ax, ay = rng.uniform(0.38, 0.45), rng.uniform(0.28, 0.34)
    c, s = np.cos(angle), np.sin(angle)
    u = (c * (xx - cx) + s * (yy - cy)) / ax
    v = (-s * (xx - cx) + c * (yy - cy)) / ay

    hu = np.full((size, size), _HU["air"], dtype=np.float32)
    organs = np.zeros((size, size), dtype=np.uint8)
    body = u**2 + v**2 < 1.0
    hu[body], organs[body] = _HU["fat"], ORGANS.index("body")
    hu[u**2 + v**2 < rng.uniform(0.78, 0.9) ** 2] = _HU["soft"]
    for name, (ou, ov, au, av) in _LAYOUT.items():
        organ = name.removesuffix("_r")
        du, dv = rng.uniform(-0.04, 0.04, 2)
        su, sv = rng.uniform(0.85, 1.15, 2)
        inside = _ellipse(u, v, ou + du, ov + dv, au * su, av * sv, rng.uniform(-0.3, 0.3))
        hu[inside] = _HU[organ] + rng.normal(0.0, 5.0)
        organs[inside] = ORGANS.index(organ)

    lesion = np.zeros((size, size), dtype=bool)
    if rng.random() < lesion_rate:
        for _ in range(int(rng.integers(1, max_lesions + 1))):
            host = ORGANS.index(str(rng.choice(_LESION_HOSTS)))
            ys, xs = np.nonzero(organs == host)
            if len(ys) == 0:
                continue
            k = int(rng.integers(len(ys)))
            ly, lx = (ys[k] + 0.5) / size - 0.5, (xs[k] + 0.5) / size - 0.5
            ru, rv = rng.uniform(0.05, 0.11, 2)
            turn = rng.uniform(0, np.pi)
            blob = _ellipse(xx, yy, lx, ly, ru, rv, turn) & (organs == host)
            while blob.sum() > _MAX_LESION_SHARE * len(ys):  # a lesion, not a whole kidney
                ru, rv = 0.8 * ru, 0.8 * rv
                blob = _ellipse(xx, yy, lx, ly, ru, rv, turn) & (organs == host)
            if blob.sum() < _MIN_LESION_PIXELS:
                continue
            delta = rng.choice((-1.0, 1.0)) * rng.uniform(50.0, 90.0)
            hu[blob] = hu[blob].mean() + delta
            lesion |= blob

    hu = gaussian_filter(hu, sigma=0.6 * size / 64)
    texture = gaussian_filter(rng.normal(0.0, 1.0, (size, size)), sigma=size / 32)
    hu += (8.0 / (texture.std() + 1e-6)) * texture * body
    hu += rng.normal(0.0, rng.uniform(6.0, 15.0), (size, size))
    return Phantom(hu.astype(np.float32), lesion.astype(np.uint8), organs)


def phantoms(
    n: int,
    size: int = 64,
    seed: int = 0,
    *,
    lesion_rate: float = 0.7,
    max_lesions: int = 3,
) -> Phantoms:
    """``n`` slices; image ``i`` is ``phantom(size, default_rng([seed, i]), ...)``."""
    items = [
        phantom(size, np.random.default_rng([seed, i]), lesion_rate=lesion_rate,
                max_lesions=max_lesions)
        for i in range(n)
    ]
    shape = (0, size, size)
    return Phantoms(
        np.stack([p.hu for p in items]) if items else np.zeros(shape, np.float32),
        np.stack([p.lesion for p in items]) if items else np.zeros(shape, np.uint8),
        np.stack([p.organs for p in items]) if items else np.zeros(shape, np.uint8),
    )


def to_unit(hu: np.ndarray, window: tuple[float, float] | None = CT_WINDOW) -> np.ndarray:
    """HU images, any shape, as float32 in [0, 1], as the node's preprocessing would give them.

    ``window`` (centre, width), by default :data:`CT_WINDOW`, clips to [c - w/2, c + w/2] and
    maps that range linearly onto [0, 1] (the node's VOI-window recipe; the synthetic CT's
    header window). ``None`` applies the paper's eq. 1, min-max over each image (the last two
    axes), which keeps the air and bone and so leaves soft-tissue contrast about 4x smaller.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if window is None:
        flat = hu.reshape(-1, *hu.shape[-2:])
        return np.stack([minmax(f) for f in flat]).reshape(hu.shape)
    low = window[0] - window[1] / 2.0
    return np.clip((hu - np.float32(low)) / np.float32(window[1]), 0.0, 1.0).astype(np.float32)
