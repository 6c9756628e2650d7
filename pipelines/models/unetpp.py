"""UNet++: the shared encoder and the nested, densely skipped decoder of MONAI BasicUNetPlusPlus."""

from __future__ import annotations

import torch
from monai.networks.nets.basic_unet import UpCat
from torch import nn

from pipelines.models.config import ACT, NetConfig
from pipelines.models.encoder import SegmentationNet


class UNetPlusPlus(SegmentationNet):
    """MONAI's BasicUNetPlusPlus for 2-D without deep supervision, returning a tensor.

    Node X(i, j) (level i, column j >= 1) upsamples X(i+1, j-1) and concatenates X(i, 0..j-1),
    as in Zhou et al. 2018; X(i, 0) are the shared encoder's maps, so an encoder trained in any
    architecture loads here. The output is the 1x1 head on X(0, L-1), like ``out[0]`` of
    BasicUNetPlusPlus with ``deep_supervision=False`` (five ``features`` give its layer set with
    ``features[5] = features[0]``).
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__(config)
        fea, norm, drop = config.features, config.norm_arg(), config.dropout
        levels = len(fea)
        self.nodes = nn.ModuleDict()
        for j in range(1, levels):
            for i in range(levels - j):
                self.nodes[f"{i}_{j}"] = UpCat(
                    2, fea[i + 1], fea[i] * j, fea[i], ACT, norm, True, drop, "deconv",
                    halves=i > 0,
                )
        self.head = nn.Conv2d(fea[0], config.n_classes, kernel_size=1)

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        levels = len(feats)
        grid: list[list[torch.Tensor]] = [[f] for f in feats]
        for j in range(1, levels):
            for i in range(levels - j):
                skip = torch.cat(grid[i], dim=1) if j > 1 else grid[i][0]
                grid[i].append(self.nodes[f"{i}_{j}"](grid[i + 1][j - 1], skip))
        return self.head(grid[0][-1])
