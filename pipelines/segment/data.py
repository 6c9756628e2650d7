"""Segmentation pairs as a torch Dataset: (image (1, H, W) float32, mask (H, W) int64)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from pipelines.phantoms import CT_WINDOW, phantoms, to_unit


class PairDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images (N, H, W) in [0, 1] and integer masks (N, H, W), held in memory.

    Raises ValueError when the shapes differ or the arrays are not (N, H, W).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        images, masks = np.asarray(images), np.asarray(masks)
        if images.ndim != 3 or images.shape != masks.shape:
            raise ValueError(f"want images and masks of one (N, H, W) shape, got "
                             f"{images.shape} and {masks.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        self.masks = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].unsqueeze(0), self.masks[index]


def phantom_pairs(
    n: int,
    size: int = 64,
    seed: int = 0,
    window: tuple[float, float] | None = CT_WINDOW,
    lesion_rate: float = 0.7,
) -> PairDataset:
    """``n`` lesion-vs-rest phantom pairs (:mod:`pipelines.phantoms`), mapped by ``to_unit``."""
    ph = phantoms(n, size, seed, lesion_rate=lesion_rate)
    return PairDataset(to_unit(ph.hu, window), ph.lesion)
