"""Features for clustering: the encoder's deepest map, global-average-pooled."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .images import ImageSource, check_images, load_batch
from .types import StopRequested


def extract_features(
    encoder: nn.Module,
    images: ImageSource,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Global-average-pooled deepest feature map of every image, in eval mode, without grad.

    Returns (N, C) float32. The encoder is left in eval mode.
    Raises ValueError for images that are not (1, H, W) and StopRequested when
    ``should_stop`` returns True between two batches.
    """
    check_images(images)
    dev = torch.device(device)
    encoder.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            if should_stop is not None and should_stop():
                raise StopRequested
            idx = range(start, min(start + batch_size, len(images)))
            chunks.append(pooled(encoder, load_batch(images, idx, dev)).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


def pooled(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C): the encoder's deepest map (last of its list), averaged over space."""
    maps = encoder(x)
    deepest = maps if isinstance(maps, torch.Tensor) else maps[-1]
    return deepest.flatten(2).mean(-1)
