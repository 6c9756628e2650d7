"""The encoder shared by every architecture, so weights pretrained with one load into another."""

from __future__ import annotations

import torch
from monai.networks.nets.basic_unet import Down, TwoConv
from torch import nn

from pipelines.models.config import ACT, NetConfig


class Encoder(nn.Module):
    """MONAI BasicUNet's encoder: two 3x3 convs, then per level a 2x2 max pool and two convs.

    ``forward(x)`` takes (B, in_channels, H, W) and returns one feature map per level, shallow
    to deep: level ``i`` has ``features[i]`` channels at ``H / 2**i`` by ``W / 2**i``. Its
    parameters depend only on ``in_channels``, ``features``, ``norm`` and ``dropout``, never on
    the architecture or ``n_classes``, so an encoder's ``state_dict`` loads into any network
    built with the same four settings. Raises ValueError when H or W is not a multiple of
    ``2 ** (len(features) - 1)``.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        norm, fea, drop = config.norm_arg(), config.features, config.dropout
        self.channels: tuple[int, ...] = fea
        self.divisor = config.divisor
        stages: list[nn.Module] = [TwoConv(2, config.in_channels, fea[0], ACT, norm, True, drop)]
        stages += [Down(2, fea[i - 1], fea[i], ACT, norm, True, drop) for i in range(1, len(fea))]
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(
                f"input {h}x{w} is not a multiple of {self.divisor} in both dimensions; "
                "pad or resize it first"
            )
        out: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class SegmentationNet(nn.Module):
    """Base of the three networks: ``encoder``, ``encoder_channels`` and ``config``.

    ``forward(x)`` maps (B, in_channels, H, W) float32 to logits (B, n_classes, H, W).
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.encoder_channels: tuple[int, ...] = config.features

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Logits at the input's resolution from the encoder's feature maps."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder(x))
