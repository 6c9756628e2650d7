"""The names pretraining shares: the encoder contract, settings, records, result, the stop.

StopRequested is raised between batches when ``should_stop`` says so; :func:`deepcluster`
turns it into a result marked ``stopped``, so callers of the run never see it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

Callback = Callable[[dict[str, Any]], None]


class EncoderModel(Protocol):
    """The model library's contract: ``encoder(x)`` gives feature maps, shallow to deep."""

    # read-only, so that a model whose encoder is a subclass of nn.Module conforms
    @property
    def encoder(self) -> nn.Module: ...

    @property
    def encoder_channels(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class DeepClusterConfig:
    """Every setting of a pretraining run, for the run and for the model card.

    Raises ValueError (on construction) for a setting out of range.
    """

    clusters: int = 100  # K
    epochs: int = 20
    reassign: int = 1  # T: epochs between two clusterings
    pca_dim: int = 256  # clamped to min(pca_dim, feature channels, images - 1)
    lr: float = 0.05
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-5
    augment: bool = True  # random flips (and quarter turns in the dense mode)
    kmeans_iter: int = 20
    mode: Literal["image", "dense"] = "image"  # one pseudo-label per image, or per place
    prenorm: bool = True  # features read before the last normalisation of each level
    pool: Literal["meanstd", "mean"] = "meanstd"  # image mode: pooling over space
    crops: bool = True  # random resized crops (dense mode: aligned to the label grid)
    crop_scale: float = 0.35  # smallest crop, share of the area (dense: of the side, sqrt)
    intensity: bool = True  # contrast, brightness, gamma and noise jitter
    jitter: float = 1.0  # strength of the intensity jitter (its ranges scaled)
    head: Literal["linear", "centroid"] = "linear"
    head_lr: float | None = None  # plain SGD for a linear head; None: lr
    dense_level: int = 2  # dense mode: the level whose grid carries the pseudo-labels
    dense_sample: int = 20000  # dense mode: places the whitening and k-means are fitted on

    def __post_init__(self) -> None:
        for name in ("epochs", "reassign", "pca_dim", "batch_size", "kmeans_iter",
                     "dense_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        choices = {"mode": ("image", "dense"), "pool": ("meanstd", "mean"),
                   "head": ("linear", "centroid")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")
        if self.head_lr is not None and not self.head_lr > 0:
            raise ValueError(f"head_lr must be positive, got {self.head_lr}")
        if self.dense_level < 0:
            raise ValueError(f"dense_level must not be negative, got {self.dense_level}")
        if self.clusters < 2:
            raise ValueError(f"clusters must be at least 2, got {self.clusters}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        torch.device(self.device)  # raises RuntimeError for a malformed device string

    @property
    def rounds(self) -> int:
        """Clusterings in a full run: ceil(epochs / reassign)."""
        return math.ceil(self.epochs / self.reassign)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClusterSizes:
    min: int
    max: int
    median: float

    @classmethod
    def of(cls, sizes: np.ndarray) -> ClusterSizes:
        return cls(int(sizes.min()), int(sizes.max()), float(np.median(sizes)))


@dataclass(frozen=True)
class RoundRecord:
    """One round: a clustering and the epochs trained on it.

    ``round`` counts from 1, ``epoch`` is the round's first epoch (from 0), ``epochs`` how
    many it trained (fewer when stopped). ``nmi`` compares this round's assignment with the
    previous one (None in the first round); ``loss`` is the mean cross-entropy of the round's
    batches (None if none ran); ``seconds`` covers the whole round, ``cluster_seconds`` the
    features and k-means; ``probes`` are the nuisance probes of this round's clusters
    (:mod:`.probes`: R² of noise level and body size, NMI with lesions where known).
    """

    round: int
    epoch: int
    epochs: int
    nmi: float | None
    loss: float | None
    empty_reseeded: int
    cluster_sizes: ClusterSizes
    seconds: float
    cluster_seconds: float
    probes: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeepClusterResult:
    """What a run leaves: the encoder's weights, its history, its last assignment, settings.

    ``encoder_state`` is a CPU copy of the encoder's state_dict; ``labels`` the pseudo-labels
    of the last round ((N,) per image, or (N, h, w) per place in the dense mode; None if
    stopped before the first clustering); ``stopped`` says the run ended on
    ``should_stop`` after ``epochs_completed`` whole epochs.
    """

    encoder_state: dict[str, torch.Tensor]
    history: list[RoundRecord]
    labels: np.ndarray | None
    config: DeepClusterConfig
    epochs_completed: int
    stopped: bool = False

    @property
    def probes(self) -> dict[str, float]:
        """The last round's nuisance probes ({} before the first clustering)."""
        return dict(self.history[-1].probes) if self.history else {}


class StopRequested(Exception):
    """``should_stop`` said stop; :func:`deepcluster` turns it into a result, stopped=True."""
