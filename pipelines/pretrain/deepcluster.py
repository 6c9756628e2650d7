"""DeepCluster self-supervised pretraining of an encoder (Caron et al. 2018; paper §2.3.1).

Each round, every ``reassign`` epochs: features of all images (the encoder's deepest map,
global-average-pooled, in eval mode) are PCA-whitened, L2-normalised and clustered by k-means
into K pseudo-labels; empty clusters are re-seeded by splitting the largest. Then the encoder
and a fresh linear head (features -> K, new each round because cluster ids permute) learn to
predict the pseudo-labels with cross-entropy, on epochs that draw equally from every cluster.

Choices the paper leaves open, made here:

- Fewer images than clusters is an error (ValueError), not a silent smaller K: the K a model
  card records is the K that was used.
- Augmentation is light and optional: random left-right and up-down flips (``augment``).
  DeepCluster's Sobel filter is for colour images and is left out; crops are left out
  because the node's preprocessed images are already framed.
- The encoder's optimiser lives across rounds (momentum is kept); the head's is new with
  each head. The encoder is trained in place and left in the mode it came in.
- Runs are deterministic on the CPU for a given seed and model: the torch random state is
  forked and seeded for the run, so the caller's own random state is left untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .clustering import Assignment, cluster_features, nmi
from .features import extract_features, pooled
from .images import ImageSource, check_images, load_batch, random_flips
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
) -> DeepClusterResult:
    """Pretrain ``encoder`` (in place, moved to ``config.device``) by DeepCluster.

    ``feature_dim`` is the channel count of the encoder's deepest map. Callbacks receive
    plain dicts: ``on_round`` a :class:`RoundRecord` as dict at the end of every round
    (also a partial one when stopped), ``on_epoch`` {round, epoch, loss, batches, seconds},
    ``on_batch`` {round, epoch, batch, batches, loss}. ``should_stop`` is polled between
    batches; when it returns True the run ends and returns what it has (``stopped=True``).

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
    history: list[RoundRecord] = field(default_factory=list)
    assignment: Assignment | None = None
    epochs_completed: int = 0
    stopped: bool = False
    optimiser: torch.optim.Optimizer = field(init=False)
    _open: dict[str, Any] | None = None  # the round being trained, until recorded

    def __post_init__(self) -> None:
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the encoder has no trainable parameters")
        self.optimiser = self._optimiser(params)

    def round(self, r: int) -> None:
        cfg = self.config
        began = time.perf_counter()
        features = extract_features(
            self.encoder, self.images, batch_size=cfg.batch_size, device=self.device,
            should_stop=self.should_stop,
        )
        if features.shape[1] != self.feature_dim:
            raise ValueError(
                f"the encoder's deepest map has {features.shape[1]} channels, "
                f"not the {self.feature_dim} given"
            )
        previous = self.assignment
        self.assignment = cluster_features(
            features, cfg.clusters, pca_dim=cfg.pca_dim, seed=cfg.seed + r,
            max_iter=cfg.kmeans_iter,
        )
        self._open = {
            "round": r + 1,
            "epoch": r * cfg.reassign,
            "epochs": 0,
            "nmi": None if previous is None else nmi(previous.labels, self.assignment.labels),
            "losses": [],
            "began": began,
            "cluster_seconds": time.perf_counter() - began,
        }
        head = self._head()
        head_optimiser = self._optimiser(list(head.parameters()))
        targets = torch.as_tensor(self.assignment.labels, device=self.device)
        sampler = UniformClusterSampler(self.assignment.labels, seed=cfg.seed + r)
        for epoch in range(r * cfg.reassign, min((r + 1) * cfg.reassign, cfg.epochs)):
            self._epoch(r + 1, epoch, head, head_optimiser, targets, list(sampler))
        self.close_round()

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
        head: nn.Linear,
        head_optimiser: torch.optim.Optimizer,
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
        for b, idx in enumerate(batches):
            if self.should_stop():
                raise StopRequested
            x = load_batch(self.images, idx, self.device)
            if self.config.augment:
                x = random_flips(x)
            loss = nn.functional.cross_entropy(head(pooled(self.encoder, x)), targets[idx])
            self.optimiser.zero_grad()
            head_optimiser.zero_grad()
            loss.backward()
            self.optimiser.step()
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

    def _head(self) -> nn.Linear:
        # DeepCluster's initialisation of the top layer
        head = nn.Linear(self.feature_dim, self.config.clusters)
        nn.init.normal_(head.weight, 0.0, 0.01)
        nn.init.zeros_(head.bias)
        return head.to(self.device)

    def _optimiser(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
