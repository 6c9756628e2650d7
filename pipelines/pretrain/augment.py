"""Augmentation for pretraining: what the clusters must learn to ignore.

Left alone, k-means on CNN features groups images by their easiest differences: noise
level, body size, brightness. The review of the first runs found clusters explaining R² 0.42
of the noise level and 0.51 of the body size, and nothing of lesions. Random resized crops
change size and position; intensity jitter changes contrast, brightness, gamma and noise, so
predicting the same pseudo-label through all of them forces features that do not carry them.

In the dense mode the pseudo-labels are maps, so every geometric change is applied to the
label map too (equivariance): flips, quarter turns and crops aligned to the label grid.
All draws come from one CPU generator, whatever the batch's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Jitter:
    """Ranges of the intensity jitter, per image (images in [0, 1])."""

    contrast: tuple[float, float] = (0.6, 1.4)  # factor around the image's mean
    brightness: float = 0.12  # added, +/-
    gamma: tuple[float, float] = (0.6, 1.6)  # exponent, drawn log-uniformly
    noise: float = 0.06  # white noise sigma, drawn in [0, noise]

    def scaled(self, strength: float) -> Jitter:
        """Every range shrunk (strength < 1) or widened around no change."""
        def around_one(r: tuple[float, float]) -> tuple[float, float]:
            return (1 + (r[0] - 1) * strength, 1 + (r[1] - 1) * strength)

        def around_one_log(r: tuple[float, float]) -> tuple[float, float]:
            return (r[0] ** strength, r[1] ** strength)

        return Jitter(around_one(self.contrast), self.brightness * strength,
                      around_one_log(self.gamma), self.noise * strength)


def intensity_jitter(x: torch.Tensor, generator: torch.Generator,
                     jitter: Jitter = Jitter()) -> torch.Tensor:
    """Contrast, brightness, gamma and white noise, drawn per image of (B, C, H, W).

    Returns a new tensor; values are clipped to [0, 1] before the gamma, not after the noise.
    """
    b = x.shape[0]
    u = torch.rand((b, 4), generator=generator).to(x.device, x.dtype)
    view = (b, 1, 1, 1)
    lo, hi = jitter.contrast
    contrast = (lo + u[:, 0] * (hi - lo)).view(view)
    bright = ((u[:, 1] * 2 - 1) * jitter.brightness).view(view)
    g_lo, g_hi = math.log(jitter.gamma[0]), math.log(jitter.gamma[1])
    gamma = torch.exp(g_lo + u[:, 2] * (g_hi - g_lo)).view(view)
    sigma = (u[:, 3] * jitter.noise).view(view)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    out = ((x - mean) * contrast + mean + bright).clamp(0.0, 1.0) ** gamma
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return out + sigma * noise


def random_resized_crops(x: torch.Tensor, generator: torch.Generator,
                         scale: tuple[float, float] = (0.35, 1.0),
                         ratio: tuple[float, float] = (0.75, 4 / 3)) -> torch.Tensor:
    """Per image, a random box of ``scale`` of the area and aspect ``ratio``, resized back
    to (H, W) bilinearly. Returns a new (B, C, H, W) tensor."""
    b, _, h, w = x.shape
    u = torch.rand((b, 4), generator=generator).tolist()
    out = []
    for i in range(b):
        area = (scale[0] + u[i][0] * (scale[1] - scale[0])) * h * w
        aspect = math.exp(math.log(ratio[0]) + u[i][1] * (math.log(ratio[1]) - math.log(ratio[0])))
        ch = min(h, max(2, round(math.sqrt(area / aspect))))
        cw = min(w, max(2, round(math.sqrt(area * aspect))))
        top, left = int(u[i][2] * (h - ch + 1)), int(u[i][3] * (w - cw + 1))
        crop = x[i : i + 1, :, top : top + ch, left : left + cw]
        out.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False))
    return torch.cat(out)


def flips(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Left-right and up-down flips, each with probability 1/2 per image."""
    f = torch.rand((x.shape[0], 2), generator=generator) < 0.5
    out = x.clone()
    for i in range(x.shape[0]):
        dims = [d for d, on in ((-1, f[i, 0]), (-2, f[i, 1])) if on]
        if dims:
            out[i] = x[i].flip(dims)
    return out


def equivariant(x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                min_share: float = 0.5, turns: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random geometry on images (B, C, H, W) and label maps (B, h, w).

    Per image: a square crop of at least ``min_share`` of the label grid's side, aligned to
    it (so each label cell maps onto whole pixels), resized back (images bilinearly, labels
    by nearest neighbour); then, with ``turns``, flips and a quarter turn (square images
    only). ``min_share=1`` leaves out the crop. H/h must be an integer (the
    encoder's stride at the labels' level). Returns new tensors of the input shapes.
    """
    b, _, hh, ww = x.shape
    lh, lw = labels.shape[-2:]
    stride = hh // lh
    side_min = max(1, math.ceil(min_share * min(lh, lw)))
    u = torch.rand((b, 6), generator=generator).tolist()
    xs, ys = [], []
    for i in range(b):
        side = side_min + int(u[i][0] * (min(lh, lw) - side_min + 1))
        top, left = int(u[i][1] * (lh - side + 1)), int(u[i][2] * (lw - side + 1))
        img = x[i : i + 1, :, top * stride : (top + side) * stride,
                left * stride : (left + side) * stride]
        lab = labels[i : i + 1, None, top : top + side, left : left + side].float()
        img = F.interpolate(img, size=(hh, ww), mode="bilinear", align_corners=False)
        lab = F.interpolate(lab, size=(lh, lw), mode="nearest-exact")  # at cell centres
        if turns:
            dims = [d for d, p in ((-1, u[i][3]), (-2, u[i][4])) if p < 0.5]
            if dims:
                img, lab = img.flip(dims), lab.flip(dims)
            quarter = int(u[i][5] * 4) if hh == ww and lh == lw else 0
            img, lab = torch.rot90(img, quarter, (-2, -1)), torch.rot90(lab, quarter, (-2, -1))
        xs.append(img)
        ys.append(lab[:, 0].long())
    return torch.cat(xs), torch.cat(ys)
