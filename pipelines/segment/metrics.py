"""Foreground Dice of predicted label maps (MONAI DiceMetric, background excluded)."""

from __future__ import annotations

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
