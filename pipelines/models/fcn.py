"""FCN-8s on the shared encoder: 1x1 scores on the last three levels, upsampled and summed."""

from __future__ import annotations

import torch
from monai.networks.blocks import ResidualUnit, UpSample
from torch import nn

from pipelines.models.config import ACT, NetConfig
from pipelines.models.encoder import SegmentationNet


class FCN(SegmentationNet):
    """Long et al.'s FCN-8s, on the shared encoder instead of VGG-16.

    A residual unit over the deepest map stands in for VGG's fc6/fc7. Its 1x1 class scores are
    upsampled x2 (a learnt transposed convolution), summed with the scores of the level above,
    again x2 and summed with the level above that, then resized bilinearly to the input. With
    five levels the three scored maps are at 1/16, 1/8 and 1/4 of the input (VGG's are at
    1/32, 1/16, 1/8), so the final, fixed upsampling is x4 rather than x8.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__(config)
        fea, k = config.features, config.n_classes
        self.context = ResidualUnit(
            2, fea[-1], fea[-1], subunits=2, act=ACT, norm=config.norm_arg(),
            dropout=config.dropout,
        )
        # score[0] is the deepest level, score[2] the shallowest of the three.
        self.score = nn.ModuleList(nn.Conv2d(fea[-1 - i], k, kernel_size=1) for i in range(3))
        self.up = nn.ModuleList(UpSample(2, k, k, scale_factor=2, mode="deconv") for _ in range(2))
        self.final_up = UpSample(
            2, k, k, scale_factor=2 ** (len(fea) - 3), mode="nontrainable", pre_conv=None,
            interp_mode="bilinear", align_corners=False,
        )

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.score[0](self.context(feats[-1]))
        x = self.up[0](x) + self.score[1](feats[-2])
        x = self.up[1](x) + self.score[2](feats[-3])
        out: torch.Tensor = self.final_up(x)
        return out
