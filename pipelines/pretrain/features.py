"""Features for clustering: what the encoder's maps say about an image, or about each place.

Two choices matter (measured on the node's U-Net encoder, InstanceNorm + LeakyReLU blocks):

- **Before the normalisation.** After an instance norm every channel of every image has
  zero mean and unit variance, so a map averaged over space is nearly the same for all images
  (coefficient of variation 0.055 at initialisation) and whitening then amplifies noise.
  ``prenorm=True`` reads each level's map where it enters its last normalisation layer (a
  forward hook; encoders without one give their output maps).
- **Mean and standard deviation.** ``pool="meanstd"`` pools each channel to its mean and its
  standard deviation over space (2C values per image), which keeps texture and spread that
  a plain mean loses; ``pool="mean"`` is the original DeepCluster pooling.

Dense features (:func:`dense_features`) are hypercolumns: every level's map brought to one
level's resolution (average-pooled from finer levels, bilinearly upsampled from coarser ones)
and concatenated, one vector per place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .images import ImageSource, check_images, load_batch
from .types import StopRequested

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def extract_features(
    encoder: nn.Module,
    images: ImageSource,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    should_stop: Callable[[], bool] | None = None,
    prenorm: bool = True,
    pool: str = "meanstd",
) -> np.ndarray:
    """Pooled deepest features of every image (:func:`pooled`), in eval mode, without grad.

    Returns (N, C) or, for ``pool="meanstd"``, (N, 2C) float32. The encoder is left in eval
    mode. Raises ValueError for images that are not (1, H, W) and StopRequested when
    ``should_stop`` returns True between two batches.
    """
    check_images(images)
    dev = torch.device(device)
    encoder.eval()
    chunks = []
    with torch.no_grad():
        for idx in _chunks(len(images), batch_size, should_stop):
            x = load_batch(images, idx, dev)
            chunks.append(pooled(encoder, x, prenorm=prenorm, pool=pool).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


def pooled(encoder: nn.Module, x: torch.Tensor, *, prenorm: bool = False,
           pool: str = "mean") -> torch.Tensor:
    """(B, C) or (B, 2C): the deepest map (pre-norm if asked), pooled over space.

    The defaults are the original DeepCluster's (the output map, averaged); the pretraining
    passes the configured ones. Raises ValueError for an unknown ``pool``.
    """
    deepest = maps(encoder, x, prenorm=prenorm)[-1]
    return pool_map(deepest, pool)


def pool_map(fmap: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, C, h, w) -> (B, C) mean, or (B, 2C) mean and standard deviation over space."""
    flat = fmap.flatten(2)
    if pool == "mean":
        return flat.mean(-1)
    if pool == "meanstd":
        return torch.cat([flat.mean(-1), flat.std(-1, unbiased=False)], dim=1)
    raise ValueError(f"pool must be 'mean' or 'meanstd', got {pool!r}")


def maps(encoder: nn.Module, x: torch.Tensor, *, prenorm: bool = True) -> list[torch.Tensor]:
    """The encoder's maps, shallow to deep; with ``prenorm`` each one taken at the input of
    the last normalisation layer that saw a tensor of its shape (else the output map)."""
    with _norm_inputs(encoder if prenorm else None) as seen:
        out = encoder(x)
    outputs = [out] if isinstance(out, torch.Tensor) else list(out)
    if not seen:
        return outputs
    result = []
    for o in outputs:
        match = [s for s in seen if s.shape == o.shape]
        result.append(match[-1] if match else o)
    return result


def dense_features(encoder: nn.Module, x: torch.Tensor, level: int, *,
                   prenorm: bool = True) -> torch.Tensor:
    """(B, sum of channels, h, w): every level's map at level ``level``'s resolution.

    Raises IndexError when the encoder has no such level.
    """
    fmaps = maps(encoder, x, prenorm=prenorm)
    size = fmaps[level].shape[-2:]
    parts = []
    for f in fmaps:
        if f.shape[-2:] == size:
            parts.append(f)
        elif f.shape[-1] > size[-1]:
            parts.append(F.adaptive_avg_pool2d(f, (int(size[0]), int(size[1]))))
        else:
            parts.append(F.interpolate(f, size=size, mode="bilinear", align_corners=False))
    return torch.cat(parts, dim=1)


def extract_dense(
    encoder: nn.Module,
    images: ImageSource,
    level: int,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    should_stop: Callable[[], bool] | None = None,
    prenorm: bool = True,
) -> np.ndarray:
    """:func:`dense_features` of every image, channels last: (N, h, w, C) float32.

    Holds them all in memory; :func:`iter_dense` gives them batch by batch.
    """
    return np.concatenate(list(iter_dense(encoder, images, level, batch_size=batch_size,
                                          device=device, should_stop=should_stop,
                                          prenorm=prenorm)))


def iter_dense(
    encoder: nn.Module,
    images: ImageSource,
    level: int,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    should_stop: Callable[[], bool] | None = None,
    prenorm: bool = True,
) -> Iterator[np.ndarray]:
    """:func:`dense_features` batch by batch, channels last: (B, h, w, C) float32 arrays,
    in eval mode, without grad (the encoder is left in eval mode)."""
    check_images(images)
    dev = torch.device(device)
    encoder.eval()
    with torch.no_grad():
        for idx in _chunks(len(images), batch_size, should_stop):
            f = dense_features(encoder, load_batch(images, idx, dev), level, prenorm=prenorm)
            yield f.movedim(1, -1).float().cpu().numpy()


def _chunks(n: int, batch_size: int,
            should_stop: Callable[[], bool] | None) -> Iterator[range]:
    for start in range(0, n, batch_size):
        if should_stop is not None and should_stop():
            raise StopRequested
        yield range(start, min(start + batch_size, n))


@contextmanager
def _norm_inputs(encoder: nn.Module | None) -> Iterator[list[torch.Tensor]]:
    seen: list[torch.Tensor] = []
    if encoder is None:
        yield seen
        return
    hooks = [m.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
             for m in encoder.modules() if isinstance(m, _NORMS)]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()
