"""Foreground Dice of predicted label maps: MONAI's per-image mean, and the scores the paper's
experiment reports (per-patient 3-D Dice, per-slice Dice counting empty slices, the rate of
false-positive slices)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric
from torch.nn.functional import one_hot


class ForegroundDice:
    """Accumulates the mean Dice over foreground classes and images, batch by batch.

    Images whose ground truth has no foreground are left out of the mean (MONAI's
    ``ignore_empty``), unless ``ignore_empty=False``: then an empty prediction on them counts
    as 1 and any false positive as 0.
    """

    def __init__(self, n_classes: int, ignore_empty: bool = True) -> None:
        self.n_classes = n_classes
        self._metric = DiceMetric(include_background=False, reduction="mean",
                                  get_not_nans=True, ignore_empty=ignore_empty)

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Label maps (B, H, W) of the same shape: the prediction and the ground truth."""
        k = self.n_classes
        self._metric(one_hot(pred.long(), k).movedim(-1, 1),
                     one_hot(target.long(), k).movedim(-1, 1))

    def value(self) -> float:
        """The mean so far; NaN when no image had a foreground (or none was added)."""
        try:
            mean, counted = self._metric.aggregate()
        except (ValueError, RuntimeError):  # nothing added
            return float("nan")
        return float(mean.item()) if counted.item() > 0 else float("nan")


def segmentation_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    patients: Sequence[object] | np.ndarray | None = None,
    n_classes: int = 2,
) -> dict[str, float]:
    """Scores of label maps ``pred`` against ``truth`` (both (N, H, W) integers).

    Returns a dict of floats:

    - ``patient_dice`` (the primary score): per patient (``patients[i]`` names the patient of
      slice ``i``; one patient when None) the 3-D Dice of its stacked slices, mean over
      foreground classes, then the mean over patients. A patient with neither truth nor
      prediction of a class scores 1 for it, a prediction without truth 0.
    - ``slice_dice``: the mean per-slice Dice counting lesion-free slices (1 when nothing is
      predicted there, 0 for any false positive).
    - ``lesion_slice_dice``: the mean per-slice Dice over slices with a lesion only (MONAI's
      ``ignore_empty``, what this project reported before; NaN when no slice has one).
    - ``fp_slice_rate``: the share of lesion-free slices with any predicted foreground
      (NaN when every slice has a lesion).

    Raises ValueError when the shapes differ or ``patients`` has not one entry per slice.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"want label maps of one (N, H, W) shape, got {pred.shape} and "
                         f"{truth.shape}")
    ids = np.zeros(len(pred), dtype=np.int64) if patients is None else np.asarray(patients)
    if len(ids) != len(pred):
        raise ValueError(f"{len(ids)} patient ids for {len(pred)} slices")
    classes = range(1, n_classes)
    p = np.stack([pred == c for c in classes], axis=1).reshape(len(pred), len(classes), -1)
    t = np.stack([truth == c for c in classes], axis=1).reshape(len(pred), len(classes), -1)
    inter, p_sum, t_sum = (p & t).sum(-1), p.sum(-1), t.sum(-1)  # (N, classes)
    per_patient = [_dice(inter[ids == i].sum(0), p_sum[ids == i].sum(0),
                         t_sum[ids == i].sum(0)).mean() for i in np.unique(ids)]
    per_slice = _dice(inter, p_sum, t_sum)  # (N, classes)
    has_lesion = t_sum.sum(1) > 0
    empty = ~has_lesion
    return {
        "patient_dice": float(np.mean(per_patient)) if per_patient else float("nan"),
        "slice_dice": float(per_slice.mean()) if len(pred) else float("nan"),
        "lesion_slice_dice": float(per_slice[has_lesion].mean()) if has_lesion.any()
        else float("nan"),
        "fp_slice_rate": float((p_sum[empty].sum(1) > 0).mean()) if empty.any()
        else float("nan"),
    }


def _dice(inter: np.ndarray, p_sum: np.ndarray, t_sum: np.ndarray) -> np.ndarray:
    denom = p_sum + t_sum
    return np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 1.0)
