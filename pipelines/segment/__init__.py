"""Segmentation training and evaluation over (image, mask) pairs: pure compute, no node.

The training function is ``from pipelines.segment.train import train``; it is not re-exported
here, where its name would shadow the ``pipelines.segment.train`` module.
"""

from pipelines.segment.data import PairDataset, phantom_pairs
from pipelines.segment.metrics import ForegroundDice
from pipelines.segment.train import EpochLog, TrainResult, evaluate, predict

__all__ = [
    "EpochLog",
    "ForegroundDice",
    "PairDataset",
    "TrainResult",
    "evaluate",
    "phantom_pairs",
    "predict",
]
