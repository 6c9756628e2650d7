"""Nuisance probes: how much of what the clusters say is noise level, body size, or lesions?

A clustering that helps segmentation should carry anatomy and lesions, not acquisition
nuisance. For each image-level factor the probe measures:

- a number (noise level, body size): the adjusted R² of a least-squares fit of the factor on
  the image's cluster membership (one-hot in the image mode; the share of each cluster over
  the image's places in the dense mode). 0: the clusters say nothing of it; 1: everything.
- a category (lesion present or not): the NMI between the image's cluster (dense mode: its
  most frequent cluster) and the category.

Per-place factors (a lesion mask, in the dense mode) get the NMI between place labels and
mask, and the enrichment: the lesion share of the most lesion-rich cluster over the base rate.

:func:`image_nuisances` estimates the two nuisances from windowed images alone, so every
run's card can carry the probes; where the truth is known (phantoms), pass it instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .clustering import nmi

BODY_THRESHOLD = 0.02
"""Pixels above this (of [0, 1]) are body: air is 0 under a CT window, fat about 0.15."""


def image_nuisances(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of (N, 1, H, W) or (N, H, W) in [0, 1]: ``noise`` (robust sigma of the
    horizontal differences inside the body, divided by sqrt 2) and ``body`` (area share)."""
    x = np.asarray(images, dtype=np.float32).reshape(len(images), *np.shape(images)[-2:])
    body = x > BODY_THRESHOLD
    diffs = np.diff(x, axis=-1)
    inside = body[..., 1:] & body[..., :-1]
    noise = np.zeros(len(x), np.float32)
    for i in range(len(x)):
        d = diffs[i][inside[i]]
        if d.size:
            noise[i] = 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0)
    return {"noise": noise, "body": body.mean(axis=(1, 2)).astype(np.float32)}


def membership(labels: np.ndarray, k: int) -> np.ndarray:
    """(N, K) cluster shares per image: one-hot for (N,) labels, place shares for (N, h, w)."""
    labels = np.asarray(labels, dtype=np.int64)
    flat = labels.reshape(len(labels), -1)
    counts = np.stack([np.bincount(row, minlength=k) for row in flat]).astype(np.float64)
    return counts / counts.sum(1, keepdims=True)


def adjusted_r2(design: np.ndarray, y: np.ndarray) -> float:
    """Adjusted R² of y on the columns of ``design`` (with an intercept); 0 for a constant y."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n < 3 or np.var(y) == 0:
        return 0.0
    x = np.column_stack([np.ones(n), design])
    rank = np.linalg.matrix_rank(x)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = float(np.sum((y - x @ coef) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - residual / total
    p = rank - 1
    if n - p - 1 <= 0:
        return r2
    return float(1.0 - (1.0 - r2) * (n - 1) / (n - p - 1))


def probe(labels: np.ndarray, k: int, factors: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The probes of ``labels`` ((N,) image or (N, h, w) place pseudo-labels in [0, K)).

    ``factors`` maps a name to per-image values (N,) — float: R² key ``r2_<name>``; integer or
    bool: NMI key ``nmi_<name>`` — or to per-place masks (N, H, W), resized to the label grid
    by nearest neighbour: keys ``nmi_<name>_places`` and ``enrichment_<name>``.
    Returns a flat dict of floats. Raises ValueError when a factor has not N rows.
    """
    labels = np.asarray(labels, dtype=np.int64)
    shares = membership(labels, k)
    top = shares.argmax(1)
    out: dict[str, float] = {}
    for name, values in factors.items():
        v = np.asarray(values)
        if len(v) != len(labels):
            raise ValueError(f"factor {name!r} has {len(v)} rows for {len(labels)} images")
        if v.ndim == 3 and labels.ndim == 3:
            out.update(_place_probe(name, labels, v, k))
        elif v.ndim == 1 and (v.dtype.kind in "biu"):
            out[f"nmi_{name}"] = nmi(top, v.astype(np.int64))
        elif v.ndim == 1:
            out[f"r2_{name}"] = adjusted_r2(shares[:, :-1], v)  # shares sum to 1: drop one
    return out


def _place_probe(name: str, labels: np.ndarray, mask: np.ndarray, k: int) -> dict[str, float]:
    h, w = labels.shape[-2:]
    sy, sx = mask.shape[-2] // h, mask.shape[-1] // w
    # a place is lesion when most of its pixels are
    cells = mask[:, : h * sy, : w * sx].reshape(len(mask), h, sy, w, sx).mean(axis=(2, 4)) >= 0.5
    flat_l, flat_m = labels.ravel(), cells.ravel()
    base = flat_m.mean()
    if base == 0:
        return {f"nmi_{name}_places": 0.0, f"enrichment_{name}": 0.0}
    per = np.bincount(flat_l, weights=flat_m, minlength=k) / np.maximum(
        np.bincount(flat_l, minlength=k), 1)
    return {f"nmi_{name}_places": nmi(flat_l, flat_m.astype(np.int64)),
            f"enrichment_{name}": float(per.max() / base)}
