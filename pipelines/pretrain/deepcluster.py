"""DeepCluster self-supervised pretraining of an encoder (Caron et al. 2018; paper §2.3.1).

Each round, every ``reassign`` epochs: features of all images are PCA-whitened,
L2-normalised and clustered by k-means into K pseudo-labels; empty clusters are re-seeded by
splitting the largest. Then the encoder and a head learn to predict the pseudo-labels with
cross-entropy, equally weighted over clusters. Two modes (``mode``):

- ``image`` (the paper's): one pseudo-label per image, from the deepest map pooled over
  space (mean and standard deviation by default); epochs draw equally from every cluster.
- ``dense``: one pseudo-label per place of one level's grid (``dense_level``), from
  hypercolumns of every level; the loss weights each cluster by the inverse of its size.
  Segmentation is a dense task, and image-level labels taught the encoder little of it.

Choices the paper leaves open, made here (issue 13 explains the ones that changed):

- Features are read before each level's last normalisation (``prenorm``): after an
  InstanceNorm the pooled features hardly differ between images (see :mod:`.features`).
- Augmentation (:mod:`.augment`): random resized crops and an intensity jitter (contrast,
  brightness, gamma, noise), so that clusters cannot encode body size or noise level; flips
  (``augment``); in the dense mode crops, flips and quarter turns move the label maps too.
  DeepCluster's Sobel filter is for colour images and is left out.
- The head is new each round (cluster ids permute): a linear layer on standardised
  features, trained by plain SGD (``head_lr``), or DeepCluster-v2's fixed centroid head.
- Every round records nuisance probes of its clusters (:mod:`.probes`) for the model card.
- Fewer images than clusters is an error (ValueError), not a silent smaller K: the K a model
  card records is the K that was used.
- The encoder's optimiser lives across rounds (momentum is kept). The encoder is trained in
  place and left in the mode it came in.
- Runs are deterministic on the CPU for a given seed and model: the torch random state is
  forked and seeded for the run, so the caller's own random state is left untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .augment import Jitter, equivariant, flips, intensity_jitter, random_resized_crops
from .clustering import Assignment, cluster_features, fit_places, nmi
from .features import dense_features, extract_features, iter_dense, pooled
from .images import ImageSource, check_images, load_batch
from .probes import image_nuisances, probe
from .sampler import UniformClusterSampler
from .types import (
    Callback,
    ClusterSizes,
    DeepClusterConfig,
    DeepClusterResult,
    EncoderModel,
    RoundRecord,
    StopRequested,
)


def pretrain_encoder(
    model: EncoderModel,
    images: ImageSource,
    config: DeepClusterConfig | None = None,
    *,
    on_round: Callback | None = None,
    on_epoch: Callback | None = None,
    on_batch: Callback | None = None,
    should_stop: Callable[[], bool] | None = None,
    probe_factors: Mapping[str, np.ndarray] | None = None,
) -> DeepClusterResult:
    """DeepCluster on ``model.encoder``, features of ``model.encoder_channels[-1]`` channels.

    Returns and raises as :func:`deepcluster`.
    """
    return deepcluster(
        model.encoder,
        model.encoder_channels[-1],
        images,
        config,
        on_round=on_round,
        on_epoch=on_epoch,
        on_batch=on_batch,
        should_stop=should_stop,
        probe_factors=probe_factors,
    )


def deepcluster(
    encoder: nn.Module,
    feature_dim: int,
    images: ImageSource,
    config: DeepClusterConfig | None = None,
    *,
    on_round: Callback | None = None,
    on_epoch: Callback | None = None,
    on_batch: Callback | None = None,
    should_stop: Callable[[], bool] | None = None,
    probe_factors: Mapping[str, np.ndarray] | None = None,
) -> DeepClusterResult:
    """Pretrain ``encoder`` (in place, moved to ``config.device``) by DeepCluster.

    ``feature_dim`` is the channel count of the encoder's deepest map. Callbacks receive
    plain dicts: ``on_round`` a :class:`RoundRecord` as dict at the end of every round
    (also a partial one when stopped), ``on_epoch`` {round, epoch, loss, batches, seconds},
    ``on_batch`` {round, epoch, batch, batches, loss}. ``should_stop`` is polled between
    batches; when it returns True the run ends and returns what it has (``stopped=True``).

    Every round's record carries nuisance probes (:func:`.probes.probe`) of its clusters
    against the noise level and body size estimated from the images
    (:func:`.probes.image_nuisances`) and against ``probe_factors``, per-image or per-pixel
    truths known to the caller (e.g. ``{"lesion": presence}``, ``{"lesion": masks}``); these
    are only measured, never trained on.

    Returns a :class:`DeepClusterResult`.
    Raises ValueError for fewer images than clusters, images that are not (1, H, W), or an
    encoder whose deepest map does not have ``feature_dim`` channels.
    """
    config = config or DeepClusterConfig()
    check_images(images)
    if len(images) < config.clusters:
        raise ValueError(
            f"{len(images)} images cannot make {config.clusters} clusters: "
            f"give at least {config.clusters} images or ask for fewer clusters"
        )
    device = torch.device(config.device)
    run = _Run(
        encoder.to(device), feature_dim, images, config, device,
        on_round=on_round, on_epoch=on_epoch, on_batch=on_batch,
        should_stop=should_stop or _never,
        factors={**_nuisances(images, config.batch_size), **dict(probe_factors or {})},
    )
    was_training = encoder.training
    try:
        with _forked_rng(device):
            torch.manual_seed(config.seed)
            try:
                for r in range(config.rounds):
                    run.round(r)
            except StopRequested:
                run.close_round()
                run.stopped = True
    finally:
        encoder.train(was_training)
    return run.result()


def _never() -> bool:
    return False


def _nuisances(images: ImageSource, batch_size: int) -> dict[str, np.ndarray]:
    parts = [image_nuisances(load_batch(images, range(i, min(i + batch_size, len(images))),
                                        torch.device("cpu")).numpy())
             for i in range(0, len(images), batch_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _forked_rng(device: torch.device) -> AbstractContextManager[None]:
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    index = torch.cuda.current_device() if device.index is None else device.index
    return torch.random.fork_rng(devices=[index], device_type="cuda")


@dataclass
class _Run:
    """The state of one run, so that a stop anywhere can still hand back a result."""

    encoder: nn.Module
    feature_dim: int
    images: ImageSource
    config: DeepClusterConfig
    device: torch.device
    on_round: Callback | None = None
    on_epoch: Callback | None = None
    on_batch: Callback | None = None
    should_stop: Callable[[], bool] = _never
    factors: dict[str, np.ndarray] = field(default_factory=dict)
    history: list[RoundRecord] = field(default_factory=list)
    assignment: Assignment | None = None
    epochs_completed: int = 0
    stopped: bool = False
    optimiser: torch.optim.Optimizer = field(init=False)
    _open: dict[str, Any] | None = None  # the round being trained, until recorded
    # features of the last clustering (a sample of places in the dense mode) and their
    # labels, for the centroid head
    _features: np.ndarray = field(init=False)
    _feature_labels: np.ndarray = field(init=False)
    _weights: torch.Tensor | None = None  # dense mode: per-cluster loss weights

    def __post_init__(self) -> None:
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the encoder has no trainable parameters")
        self.optimiser = self._optimiser(params)
        self.generator = torch.Generator().manual_seed(self.config.seed)

    def round(self, r: int) -> None:
        cfg = self.config
        began = time.perf_counter()
        previous = self.assignment
        self.assignment = self._cluster(r)
        labels = self.assignment.labels
        changed = None
        if previous is not None:
            changed = nmi(previous.labels.ravel(), labels.ravel())
        self._open = {
            "round": r + 1,
            "epoch": r * cfg.reassign,
            "epochs": 0,
            "nmi": changed,
            "losses": [],
            "began": began,
            "cluster_seconds": time.perf_counter() - began,
            "probes": probe(labels, cfg.clusters, self.factors) if self.factors else {},
        }
        head = self._head()
        trainable = [p for p in head.parameters() if p.requires_grad]
        head_optimiser = torch.optim.SGD(trainable, lr=cfg.head_lr or cfg.lr) if trainable \
            else None
        targets = torch.as_tensor(labels, device=self.device)
        if cfg.mode == "image":
            sampler: Any = UniformClusterSampler(labels, seed=cfg.seed + r)
            self._weights = None
        else:  # uniform over clusters by weighting the places' loss
            sampler = _Shuffle(len(self.images), cfg.seed + r)
            sizes = np.maximum(self.assignment.sizes, 1).astype(np.float64)
            w = 1.0 / sizes
            self._weights = torch.as_tensor(w / w.mean(), dtype=torch.float32,
                                            device=self.device)
        for epoch in range(r * cfg.reassign, min((r + 1) * cfg.reassign, cfg.epochs)):
            self._epoch(r + 1, epoch, head, head_optimiser, targets, list(sampler))
        self.close_round()

    def _cluster(self, r: int) -> Assignment:
        cfg = self.config
        if cfg.mode == "dense":
            return self._cluster_places(r)
        features = extract_features(
            self.encoder, self.images, batch_size=cfg.batch_size, device=self.device,
            should_stop=self.should_stop, prenorm=cfg.prenorm, pool=cfg.pool,
        )
        per_channel = 2 if cfg.pool == "meanstd" else 1
        if features.shape[1] != self.feature_dim * per_channel:
            raise ValueError(
                f"the encoder's deepest map has {features.shape[1] // per_channel} channels, "
                f"not the {self.feature_dim} given"
            )
        assignment = cluster_features(
            features, cfg.clusters, pca_dim=cfg.pca_dim, seed=cfg.seed + r,
            max_iter=cfg.kmeans_iter,
        )
        self._features, self._feature_labels = features, assignment.labels
        return assignment

    def close_round(self) -> None:
        """Record the open round (if any) and tell ``on_round``."""
        if self._open is None or self.assignment is None:
            return
        o, self._open = self._open, None
        losses = o["losses"]
        record = RoundRecord(
            round=o["round"],
            epoch=o["epoch"],
            epochs=o["epochs"],
            nmi=o["nmi"],
            loss=float(np.mean(losses)) if losses else None,
            empty_reseeded=self.assignment.reseeded,
            cluster_sizes=ClusterSizes.of(self.assignment.sizes),
            seconds=time.perf_counter() - o["began"],
            cluster_seconds=o["cluster_seconds"],
            probes=o["probes"],
        )
        self.history.append(record)
        if self.on_round is not None:
            self.on_round(record.as_dict())

    def result(self) -> DeepClusterResult:
        state = {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
        return DeepClusterResult(
            encoder_state=state,
            history=self.history,
            labels=None if self.assignment is None else self.assignment.labels.copy(),
            config=self.config,
            epochs_completed=self.epochs_completed,
            stopped=self.stopped,
        )

    def _epoch(
        self,
        round_: int,
        epoch: int,
        head: nn.Module,
        head_optimiser: torch.optim.Optimizer | None,
        targets: torch.Tensor,
        order: list[int],
    ) -> None:
        began = time.perf_counter()
        bs = self.config.batch_size
        # a last batch of one image is dropped: batch norm cannot train on it
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()
        assert self._open is not None
        losses: list[float] = []
        self.encoder.train()
        head.train()
        for b, idx in enumerate(batches):
            if self.should_stop():
                raise StopRequested
            loss = self._loss(head, load_batch(self.images, idx, self.device), targets[idx])
            self.optimiser.zero_grad()
            if head_optimiser is not None:
                head_optimiser.zero_grad()
            loss.backward()
            self.optimiser.step()
            if head_optimiser is not None:
                head_optimiser.step()
            losses.append(float(loss.detach()))
            self._open["losses"].append(losses[-1])
            if self.on_batch is not None:
                self.on_batch({
                    "round": round_, "epoch": epoch, "batch": b + 1,
                    "batches": len(batches), "loss": losses[-1],
                })
        self._open["epochs"] += 1
        self.epochs_completed += 1
        if self.on_epoch is not None:
            self.on_epoch({
                "round": round_, "epoch": epoch, "loss": float(np.mean(losses)),
                "batches": len(batches), "seconds": time.perf_counter() - began,
            })

    def _cluster_places(self, r: int) -> Assignment:
        """Two passes, so that no more than a sample of places is ever held: fit on
        ``dense_sample`` places drawn evenly over the images, then label every place."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed + r)
        per_image = -(-cfg.dense_sample // len(self.images))

        def passes() -> Iterator[np.ndarray]:
            return iter_dense(self.encoder, self.images, cfg.dense_level,
                              batch_size=cfg.batch_size, device=self.device,
                              should_stop=self.should_stop, prenorm=cfg.prenorm)

        sample = []
        for f in passes():
            places = f.reshape(len(f), -1, f.shape[-1])
            take = min(per_image, places.shape[1])
            for row in places:
                sample.append(row[rng.choice(len(row), size=take, replace=False)])
        fitted = fit_places(np.concatenate(sample), cfg.clusters, pca_dim=cfg.pca_dim,
                            seed=cfg.seed + r, max_iter=cfg.kmeans_iter)
        labels = np.concatenate([fitted.assign(f) for f in passes()])
        self._features = np.concatenate(sample)
        self._feature_labels = fitted.sample_labels
        return Assignment(labels=labels, centroids=fitted.centroids, reseeded=fitted.reseeded)

    def _loss(self, head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg, gen = self.config, self.generator
        if cfg.mode == "dense":
            if cfg.crops or cfg.augment:
                share = cfg.crop_scale ** 0.5 if cfg.crops else 1.0
                x, y = equivariant(x, y, gen, min_share=share, turns=cfg.augment)
            if cfg.intensity:
                x = intensity_jitter(x, gen, Jitter().scaled(cfg.jitter))
            logits = head(dense_features(self.encoder, x, cfg.dense_level,
                                         prenorm=cfg.prenorm))
            return nn.functional.cross_entropy(logits, y, weight=self._weights)
        if cfg.crops:
            x = random_resized_crops(x, gen, scale=(cfg.crop_scale, 1.0))
        if cfg.augment:
            x = flips(x, gen)
        if cfg.intensity:
            x = intensity_jitter(x, gen, Jitter().scaled(cfg.jitter))
        return nn.functional.cross_entropy(
            head(pooled(self.encoder, x, prenorm=cfg.prenorm, pool=cfg.pool)), y)

    def _head(self) -> nn.Module:
        cfg = self.config
        assert self.assignment is not None
        dim = self._features.shape[-1]
        dense = cfg.mode == "dense"
        if cfg.head == "centroid":
            return _CentroidHead(self._features, self._feature_labels, cfg.clusters,
                                 dense).to(self.device)
        # standardised features (no affine), then DeepCluster's initialisation of the top
        # layer; pre-norm features have no fixed scale, so the head sees them standardised
        norm: nn.Module = nn.BatchNorm2d(dim, affine=False) if dense else nn.BatchNorm1d(
            dim, affine=False)
        linear: nn.Conv2d | nn.Linear = nn.Conv2d(dim, cfg.clusters, 1) if dense else nn.Linear(
            dim, cfg.clusters)
        nn.init.normal_(linear.weight, 0.0, 0.01)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
        return nn.Sequential(norm, linear).to(self.device)

    def _optimiser(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )


class _Shuffle:
    """A fresh seeded permutation of range(n) per iteration (the dense mode's epochs)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self._rng = n, np.random.default_rng(seed)

    def __iter__(self) -> Any:
        return iter(self._rng.permutation(self.n).tolist())


class _CentroidHead(nn.Module):
    """DeepCluster-v2's head: cosine similarity to the clusters' centroids, divided by a
    temperature. The centroids are the means of the standardised features of each cluster
    in this round's clustering and stay fixed, so there is no random head to learn first."""

    mean: torch.Tensor
    std: torch.Tensor
    centroids: torch.Tensor

    def __init__(self, features: np.ndarray, labels: np.ndarray, k: int, dense: bool,
                 temperature: float = 0.1) -> None:
        super().__init__()
        f = torch.as_tensor(features.reshape(-1, features.shape[-1]), dtype=torch.float32)
        lab = torch.as_tensor(np.asarray(labels).ravel(), dtype=torch.long)
        mean, std = f.mean(0), f.std(0) + 1e-6
        z = nn.functional.normalize((f - mean) / std, dim=1)
        sums = torch.zeros(k, f.shape[1]).index_add_(0, lab, z)
        centroids = nn.functional.normalize(sums, dim=1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("centroids", centroids)
        self.dense, self.temperature = dense, temperature

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.dense:
            z = (f.movedim(1, -1) - self.mean) / self.std
            z = nn.functional.normalize(z, dim=-1)
            return (z @ self.centroids.T).movedim(-1, 1) / self.temperature
        z = nn.functional.normalize((f - self.mean) / self.std, dim=1)
        return z @ self.centroids.T / self.temperature
