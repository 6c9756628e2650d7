"""Segmentation training for a fair comparison: a fixed step budget, the last state kept.

:func:`fit` trains for exactly ``steps`` optimiser steps (not epochs: a run on 2 patients and
one on 20 then get the same number of updates), with a cosine learning-rate schedule,
random flips and affine warps, an optional smaller learning rate for the encoder and an
optional warm-up with the encoder frozen (so a pretrained encoder is not disturbed while the
fresh decoder is still random). The model is evaluated as it is at the end: no checkpoint is
picked on held-out data, so no validation set is needed and none is overfitted.

One ``seed`` fixes the data order and the augmentation draws; the weights' initialisation
is the caller's (``pipelines.models.build(..., seed=...)``). Two runs with the same seed
and different initial encoders therefore see the same batches in the same order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from pipelines.segment.augment import Affine, random_affine
from pipelines.segment.metrics import segmentation_scores
from pipelines.segment.train import Pairs, _logits, _seeded, _threads


@dataclass(frozen=True)
class FitConfig:
    """Every setting of a :func:`fit` run, for the run and for a model card.

    ``encoder_lr`` multiplies ``lr`` for the encoder's parameters; ``freeze_encoder`` steps at
    the start train the decoder only. ``autocast`` is None or "bfloat16" (CUDA mixed
    precision). Raises ValueError (on construction) for a setting out of range.
    """

    steps: int = 600
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # or "constant"
    warmup: int = 0  # linear warm-up steps of the schedule
    augment: bool = True
    encoder_lr: float = 1.0
    freeze_encoder: int = 0
    seed: int = 0
    device: str = "cpu"
    autocast: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.encoder_lr < 0:
            raise ValueError("lr must be positive and encoder_lr not negative")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.autocast not in (None, "bfloat16"):
            raise ValueError(f"autocast must be None or 'bfloat16', got {self.autocast!r}")
        if self.freeze_encoder < 0 or self.warmup < 0:
            raise ValueError("freeze_encoder and warmup must not be negative")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """``curve``: one dict per evaluation ({step, loss, and the scores of :func:`scores`});
    ``losses``: the training loss of every step; ``state``: the final state (CPU tensors)."""

    curve: list[dict[str, float]]
    losses: list[float]
    state: dict[str, torch.Tensor]
    seconds: float


def lr_factor(step: int, config: FitConfig) -> float:
    """The schedule's multiplier of ``lr`` at ``step`` (from 0): linear warm-up, then cosine
    from 1 to 0 over the remaining steps (or 1 throughout for "constant")."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if config.schedule == "constant":
        return 1.0
    t = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches: fresh permutations of range(n) laid end to end, cut every
    ``batch_size`` (a batch may straddle two permutations; none is ever short)."""
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(n, generator=generator)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def fit(
    model: nn.Module,
    data: Pairs,
    config: FitConfig,
    *,
    eval_data: Pairs | None = None,
    eval_patients: Sequence[object] | np.ndarray | None = None,
    eval_every: int | None = None,
    on_eval: Callable[[dict[str, float]], Any] | None = None,
    num_threads: int | None = None,
) -> FitResult:
    """Train ``model`` in place for ``config.steps`` steps (DiceCE loss, AdamW); keep the end.

    With ``eval_data``, :func:`scores` are measured every ``eval_every`` steps (and after the
    last), for a Dice-versus-step curve; they never choose a state. ``eval_patients`` gives
    the patient of each ``eval_data`` slice for the per-patient Dice.
    Returns a :class:`FitResult`. Raises ValueError for an empty ``data``, AttributeError when
    ``encoder_lr`` or ``freeze_encoder`` is set and the model has no ``encoder``.
    """
    if len(data) == 0:  # type: ignore[arg-type]
        raise ValueError("no training pairs")
    dev = torch.device(config.device)
    model.to(dev)
    groups = _param_groups(model, config)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, include_background=False)
    curve: list[dict[str, float]] = []
    losses: list[float] = []
    began = time.perf_counter()
    with _threads(num_threads), _seeded(config.seed, dev):
        gen = torch.Generator().manual_seed(config.seed)
        optimiser = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        base = [g["lr"] for g in optimiser.param_groups]
        order = batches(len(data), config.batch_size, gen)  # type: ignore[arg-type]
        model.train()
        for step in range(config.steps):
            frozen = step < config.freeze_encoder
            for g, lr in zip(optimiser.param_groups, base, strict=True):
                g["lr"] = 0.0 if frozen and g["name"] == "encoder" else lr * lr_factor(
                    step, config)
            images, masks = _batch(data, next(order), dev)
            if config.augment:
                images, masks = random_affine(images, masks, gen, Affine())
            optimiser.zero_grad(set_to_none=True)
            with _autocast(config, dev):
                logits = _logits(model, images)
            loss = loss_fn(logits.float(), masks.unsqueeze(1))
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            done = step + 1
            if eval_data is not None and (done == config.steps or (
                    eval_every and done % eval_every == 0)):
                point = {"step": float(done), "loss": float(np.mean(losses[-20:])),
                         **scores(model, eval_data, eval_patients, device=config.device,
                                  autocast=config.autocast)}
                curve.append(point)
                if on_eval is not None:
                    on_eval(dict(point))
                model.train()
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return FitResult(curve, losses, state, time.perf_counter() - began)


def scores(
    model: nn.Module,
    data: Pairs,
    patients: Sequence[object] | np.ndarray | None = None,
    *,
    batch_size: int = 32,
    device: str = "cpu",
    autocast: str | None = None,
) -> dict[str, float]:
    """:func:`pipelines.segment.metrics.segmentation_scores` of ``model``'s argmax on ``data``.

    The model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    preds, truths = [], []
    dev = torch.device(device)
    cfg = FitConfig(device=device, autocast=autocast)
    try:
        with torch.inference_mode(), _autocast(cfg, dev):
            n = len(data)  # type: ignore[arg-type]
            for start in range(0, n, batch_size):
                images, masks = _batch(data, torch.arange(start, min(n, start + batch_size)),
                                       dev)
                logits = _logits(model, images)
                preds.append(logits.argmax(1).cpu().numpy())
                truths.append(masks.cpu().numpy())
                k = logits.shape[1]
    finally:
        model.train(was_training)
    return segmentation_scores(np.concatenate(preds), np.concatenate(truths), patients,
                               n_classes=k)


def _param_groups(model: nn.Module, config: FitConfig) -> list[dict[str, Any]]:
    if config.encoder_lr == 1.0 and config.freeze_encoder == 0:
        return [{"params": list(model.parameters()), "lr": config.lr, "name": "all"}]
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    mine = {id(p) for p in encoder.parameters()}
    return [
        {"params": list(encoder.parameters()), "lr": config.lr * config.encoder_lr,
         "name": "encoder"},
        {"params": [p for p in model.parameters() if id(p) not in mine], "lr": config.lr,
         "name": "decoder"},
    ]


def _batch(data: Pairs, idx: torch.Tensor, dev: torch.device) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    images = getattr(data, "images", None)
    masks = getattr(data, "masks", None)
    if isinstance(images, torch.Tensor) and isinstance(masks, torch.Tensor):  # PairDataset
        x, y = images[idx].unsqueeze(1), masks[idx]
    else:
        items = [data[int(i)] for i in idx]
        x = torch.stack([torch.as_tensor(a) for a, _ in items])
        y = torch.stack([torch.as_tensor(b) for _, b in items])
    return x.to(dev, torch.float32), y.to(dev, torch.long)


def _autocast(config: FitConfig, dev: torch.device) -> Any:
    if config.autocast is None:
        return nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
