"""Sampling uniformly over pseudo-labels, so that big clusters do not dominate an epoch.

DeepCluster trains on k-means pseudo-labels whose clusters can be very unequal; a classifier
trained on them learns to predict the big ones. Each epoch therefore draws the same number
of images from every non-empty cluster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class UniformClusterSampler(Sampler[int]):
    """Indices for one epoch: ``per_cluster`` from each non-empty cluster, shuffled.

    ``per_cluster`` defaults to ceil(N / non-empty clusters), so an epoch is about N images.
    Within a cluster images are drawn without replacement, cycling through a fresh
    permutation when the cluster is smaller than ``per_cluster``, so each member appears
    ⌊per_cluster / size⌋ or one more times. Every iteration draws anew from one seeded
    generator: epochs differ, runs with the same seed are identical.

    Raises ValueError for empty ``labels`` or ``per_cluster`` < 1.
    """

    def __init__(
        self, labels: np.ndarray, *, per_cluster: int | None = None, seed: int = 0
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError("labels must be a non-empty 1-D array")
        self.clusters: list[np.ndarray] = [
            np.flatnonzero(labels == c) for c in np.unique(labels)
        ]
        if per_cluster is None:
            per_cluster = math.ceil(labels.size / len(self.clusters))
        if per_cluster < 1:
            raise ValueError(f"per_cluster must be at least 1, got {per_cluster}")
        self.per_cluster = per_cluster
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.per_cluster * len(self.clusters)

    def __iter__(self) -> Iterator[int]:
        draws = [self._draw(members) for members in self.clusters]
        order = self._rng.permutation(np.concatenate(draws))
        return iter(order.tolist())

    def _draw(self, members: np.ndarray) -> np.ndarray:
        rounds = math.ceil(self.per_cluster / members.size)
        cycled = np.concatenate([self._rng.permutation(members) for _ in range(rounds)])
        return cycled[: self.per_cluster]
