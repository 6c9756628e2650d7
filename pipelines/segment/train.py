"""Train, evaluate and apply a segmentation network: DiceCE loss, Adam, foreground Dice.

Datasets yield ``(image (C, H, W) float32, mask (H, W) int64)``; see :mod:`.data`.
Randomness (weight updates, shuffling, dropout) is seeded inside a forked RNG, so a run is
repeatable on the CPU and the caller's global torch RNG is left as it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipelines.segment.metrics import ForegroundDice

Pairs = Dataset[tuple[torch.Tensor, torch.Tensor]]


class EpochLog(TypedDict):
    """One epoch: mean training loss, validation foreground Dice (NaN without one), seconds."""

    epoch: int
    loss: float
    val_dice: float
    seconds: float


@dataclass
class TrainResult:
    """``history`` per epoch; ``best_state`` (CPU tensors) is the model's state at ``best_epoch``.

    ``best_epoch`` has the highest validation Dice (NaN counting as lowest, ties going to the
    later epoch), or is the last epoch without validation data; 0, with the initial state, when
    no epoch ran.
    """

    history: list[EpochLog]
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_dice: float


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    devices = [] if device.type != "cuda" else [device]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _score(dice: float) -> float:
    return -math.inf if math.isnan(dice) else dice


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train(
    model: nn.Module,
    train_data: Pairs,
    val_data: Pairs | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    on_epoch: Callable[[EpochLog], Any] | None = None,
    init_encoder: dict[str, torch.Tensor] | None = None,
    num_threads: int | None = None,
    batch_dice: bool = True,
    dice_background: bool = False,
) -> TrainResult:
    """Train ``model`` in place with MONAI DiceCELoss (softmax, one-hot targets) and Adam.

    By default the Dice term is computed over the whole batch (``batch_dice``), so that an
    image without a lesion is not scored on its own, and over the foreground classes only
    (``dice_background``); the cross-entropy term covers every class. On the phantom lesions,
    leaving the background out of the Dice term made the first epochs learn markedly faster.

    ``init_encoder``, an encoder ``state_dict``, is loaded into ``model.encoder`` first (strict:
    RuntimeError on a mismatch, AttributeError if the model has no ``encoder``). After each
    epoch the foreground Dice on ``val_data`` is measured and ``on_epoch`` gets the epoch's
    :class:`EpochLog`. At the end the model holds the best state. ``num_threads`` sets torch's
    CPU threads for the run only. Returns a :class:`TrainResult`.
    """
    dev = torch.device(device)
    if init_encoder is not None:
        encoder: nn.Module = model.encoder  # type: ignore[assignment]
        encoder.load_state_dict(init_encoder)
    model.to(dev)
    best = TrainResult([], _cpu_state(model), 0, float("nan"))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=batch_dice,
                         include_background=dice_background)
    with _threads(num_threads), _seeded(seed, dev):
        loader = DataLoader(train_data, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            total, seen = 0.0, 0
            for images, masks in loader:
                images, masks = images.to(dev), masks.to(dev)
                optimiser.zero_grad(set_to_none=True)
                loss = loss_fn(model(images), masks.unsqueeze(1))
                loss.backward()
                optimiser.step()
                total += float(loss.item()) * len(images)
                seen += len(images)
            dice = (evaluate(model, val_data, batch_size=batch_size, device=device)
                    if val_data is not None else float("nan"))
            log = EpochLog(epoch=epoch, loss=total / max(seen, 1), val_dice=dice,
                           seconds=time.perf_counter() - start)
            best.history.append(log)
            if val_data is None or _score(dice) >= _score(best.best_val_dice):
                best.best_state, best.best_epoch = _cpu_state(model), epoch
                best.best_val_dice = dice
            if on_epoch is not None:
                on_epoch(log.copy())
    model.load_state_dict(best.best_state)
    return best


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    return out[0] if isinstance(out, list | tuple) else out  # MONAI's UNet++ returns a list


def evaluate(
    model: nn.Module,
    dataset: Pairs,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    ignore_empty: bool = True,
) -> float:
    """Mean foreground Dice of ``model``'s argmax over ``dataset`` (background excluded).

    Images without foreground are left out unless ``ignore_empty`` is False (see
    :class:`ForegroundDice`); NaN when none is left. The model's train/eval mode is restored.
    """
    metric: ForegroundDice | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for images, masks in DataLoader(dataset, batch_size=batch_size):
                logits = _logits(model, images.to(device))
                metric = metric or ForegroundDice(logits.shape[1], ignore_empty)
                metric.add(logits.argmax(1).cpu(), masks)
    finally:
        model.train(was_training)
    return metric.value() if metric is not None else float("nan")


def predict(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 16,
    device: str = "cpu",
) -> np.ndarray:
    """Label maps, uint8 (N, H, W): the argmax of ``model`` over images (N, H, W) or (N, C, H, W).

    Raises ValueError for any other shape.
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images,
                        dtype=torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"want images (N, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for chunk in x.split(batch_size):
                out.append(_logits(model, chunk.to(device)).argmax(1).to("cpu", torch.uint8))
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, *x.shape[-2:]), dtype=np.uint8)
    return torch.cat(out).numpy()
