"""2-D segmentation networks (FCN-8s, U-Net, UNet++) over one shared encoder.

Every network is a :class:`SegmentationNet`: ``net(x)`` maps (B, C, H, W) float32 to logits
(B, n_classes, H, W); ``net.encoder(x)`` returns the feature maps shallow to deep, with
``net.encoder_channels`` channels; ``net.config`` rebuilds it. The encoder is the same module
in all three, so ``a.encoder.load_state_dict(b.encoder.state_dict())`` works across
architectures built with the same ``features``, ``in_channels``, ``norm`` and ``dropout``.
"""

from pipelines.models.config import ARCHS, DEFAULT_FEATURES, NetConfig
from pipelines.models.encoder import Encoder, SegmentationNet
from pipelines.models.fcn import FCN
from pipelines.models.registry import build, build_from
from pipelines.models.unet import UNet
from pipelines.models.unetpp import UNetPlusPlus

__all__ = [
    "ARCHS",
    "DEFAULT_FEATURES",
    "FCN",
    "Encoder",
    "NetConfig",
    "SegmentationNet",
    "UNet",
    "UNetPlusPlus",
    "build",
    "build_from",
]
