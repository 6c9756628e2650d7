"""Images for pretraining: any indexable collection of (1, H, W) float images, in batches.

Accepted: a numpy array (N, 1, H, W), a torch tensor of that shape, or anything with
``len()`` and integer indexing whose items are (1, H, W) arrays or tensors (a torch Dataset
of the node's preprocessed outputs, a list). Values are expected in [0, 1], float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch


class ImageSource(Protocol):
    """What pretraining reads images from: a length and integer indexing."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


def check_images(images: ImageSource) -> tuple[int, int]:
    """Check the first image's shape. Returns (H, W).

    Raises ValueError for an empty source or an image that is not (1, H, W).
    """
    if len(images) == 0:
        raise ValueError("no images to pretrain on")
    shape = tuple(np.shape(images[0]))
    if len(shape) != 3 or shape[0] != 1:
        raise ValueError(f"images must be (1, H, W), the first one is {shape}")
    return int(shape[1]), int(shape[2])


def load_batch(
    images: ImageSource, indices: Sequence[int], device: torch.device
) -> torch.Tensor:
    """The images at ``indices`` as one (B, 1, H, W) float32 tensor on ``device``.

    Raises ValueError when the images do not share one shape.
    """
    if isinstance(images, np.ndarray):
        batch = torch.from_numpy(images[np.asarray(indices)])
    elif isinstance(images, torch.Tensor):
        batch = images[torch.as_tensor(indices)]
    else:
        items = [torch.as_tensor(images[i]) for i in indices]
        try:
            batch = torch.stack(items)
        except RuntimeError as exc:
            raise ValueError(f"images of different shapes in one batch: {exc}") from exc
    return batch.to(device=device, dtype=torch.float32)


def random_flips(batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right and, independently, up-down, each with probability 1/2.

    Returns a new (B, 1, H, W) tensor; ``generator`` (a CPU one: the draws are made on the
    CPU whatever the batch's device) makes it reproducible.
    """
    flips = (torch.rand((batch.shape[0], 2), generator=generator) < 0.5).to(batch.device)
    out = batch.clone()
    lr, ud = flips[:, 0], flips[:, 1]
    out[lr] = out[lr].flip(-1)
    out[ud] = out[ud].flip(-2)
    return out
