"""Geometric augmentation of (image, mask) batches for segmentation training, on any device.

Each image of a batch gets its own random left-right / up-down flip and a small affine map
(rotation, isotropic scale, translation). Images are resampled bilinearly, masks by nearest
neighbour, through one grid, so a mask stays aligned with its image. Outside the image is 0
(air after a CT window) for the image and background for the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Affine:
    """Ranges of the random affine: degrees, scale factor, translation as a share of the side."""

    rotate: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.06
    flips: bool = True


def random_affine(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    ranges: Affine = Affine(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip and warp ``images`` (B, C, H, W) float and ``masks`` (B, H, W) int alike.

    The draws come from ``generator`` (a CPU one, whatever the batch's device), so a seed fixes
    them. Returns new tensors of the same shapes and dtypes.
    """
    b = images.shape[0]
    u = torch.rand((b, 6), generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(ranges.rotate)
    lo, hi = ranges.scale
    scale = lo + u[:, 1] * (hi - lo)
    shift = (u[:, 2:4] * 2 - 1) * ranges.translate * 2  # grid coordinates span 2
    sx = torch.where((u[:, 4] < 0.5) & ranges.flips, -1.0, 1.0)
    sy = torch.where((u[:, 5] < 0.5) & ranges.flips, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * sx, -sin * sy, shift[:, 0]], dim=1),
        torch.stack([sin * sx, cos * sy, shift[:, 1]], dim=1),
    ], dim=1).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    labels = F.grid_sample(masks[:, None].to(images.dtype), grid, mode="nearest",
                           padding_mode="zeros", align_corners=False)
    return warped, labels[:, 0].round().to(masks.dtype)
