"""FCN on the shared encoder: 1x1 scores on every level but the first, upsampled and summed."""

from __future__ import annotations

import torch
from monai.networks.blocks import ResidualUnit, UpSample
from torch import nn

from pipelines.models.config import ACT, NetConfig
from pipelines.models.encoder import SegmentationNet


class FCN(SegmentationNet):
    """Long et al.'s FCN with skips down to half resolution, on the shared encoder.

    A residual unit over the deepest map stands in for VGG's fc6/fc7. Its 1x1 class scores
    are upsampled x2 (a learnt transposed convolution) and summed with the scores of the level
    above, level by level, up to level 1 (half the input's resolution); a fixed bilinear x2
    gives the input's size. FCN-8s stops at 1/8 (with five levels here: 1/4, a 16x16 map for
    a 64x64 image), too coarse to outline lesions of 5 to 8 pixels; the finest score map is
    now 1/2 at every size, 32x32 at 64x64.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__(config)
        fea, k = config.features, config.n_classes
        self.context = ResidualUnit(
            2, fea[-1], fea[-1], subunits=2, act=ACT, norm=config.norm_arg(),
            dropout=config.dropout,
        )
        scored = len(fea) - 1  # levels L-1 .. 1
        # score[0] is the deepest level, score[-1] level 1.
        self.score = nn.ModuleList(nn.Conv2d(fea[-1 - i], k, kernel_size=1)
                                   for i in range(scored))
        self.up = nn.ModuleList(UpSample(2, k, k, scale_factor=2, mode="deconv")
                                for _ in range(scored - 1))
        self.final_up = UpSample(
            2, k, k, scale_factor=2, mode="nontrainable", pre_conv=None,
            interp_mode="bilinear", align_corners=False,
        )

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.score[0](self.context(feats[-1]))
        for i, up in enumerate(self.up, start=1):
            x = up(x) + self.score[i](feats[-1 - i])
        out: torch.Tensor = self.final_up(x)
        return out
