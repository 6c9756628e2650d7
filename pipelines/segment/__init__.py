"""Segmentation training and evaluation over (image, mask) pairs: pure compute, no node.

The training function is ``from pipelines.segment.train import train``; it is not re-exported
here, where its name would shadow the ``pipelines.segment.train`` module.
"""

from pipelines.segment.augment import Affine, random_affine
from pipelines.segment.data import PairDataset, phantom_pairs
from pipelines.segment.fit import FitConfig, FitResult, fit, scores
from pipelines.segment.metrics import ForegroundDice, segmentation_scores
from pipelines.segment.train import EpochLog, TrainResult, evaluate, predict

__all__ = [
    "Affine",
    "EpochLog",
    "FitConfig",
    "FitResult",
    "ForegroundDice",
    "PairDataset",
    "TrainResult",
    "evaluate",
    "fit",
    "phantom_pairs",
    "predict",
    "random_affine",
    "scores",
    "segmentation_scores",
]
