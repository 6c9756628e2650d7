"""U-Net: the shared encoder and MONAI BasicUNet's decoder (up-convolve, concatenate, 2 convs)."""

from __future__ import annotations

import torch
from monai.networks.nets.basic_unet import UpCat
from torch import nn

from pipelines.models.config import ACT, NetConfig
from pipelines.models.encoder import SegmentationNet


class UNet(SegmentationNet):
    """MONAI's BasicUNet for 2-D, rebuilt so the encoder is one addressable module.

    With five ``features`` it has the same layers as ``BasicUNet(spatial_dims=2,
    features=(*features, features[0]))``; the decoder's last level keeps ``features[0]``.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__(config)
        fea, norm, drop = config.features, config.norm_arg(), config.dropout
        # ups[i] goes from level i+1 to level i; the last one (level 0) does not halve.
        self.ups = nn.ModuleList(
            UpCat(2, fea[i + 1], fea[i], fea[i], ACT, norm, True, drop, "deconv", halves=i > 0)
            for i in range(len(fea) - 1)
        )
        self.head = nn.Conv2d(fea[0], config.n_classes, kernel_size=1)

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for i in reversed(range(len(self.ups))):
            x = self.ups[i](x, feats[i])
        return self.head(x)
