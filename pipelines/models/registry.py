"""Build a segmentation network by name: ``build("unet", features=(8, 16, 32, 64, 128))``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipelines.models.config import ARCHS, DEFAULT_FEATURES, NetConfig
from pipelines.models.encoder import SegmentationNet
from pipelines.models.fcn import FCN
from pipelines.models.unet import UNet
from pipelines.models.unetpp import UNetPlusPlus

_CLASSES: dict[str, Callable[[NetConfig], SegmentationNet]] = {
    "fcn": FCN,
    "unet": UNet,
    "unetpp": UNetPlusPlus,
}
assert tuple(_CLASSES) == ARCHS


def build_from(config: NetConfig, *, seed: int | None = None) -> SegmentationNet:
    """The network ``config`` describes, with fresh weights.

    ``seed`` makes the initial weights reproducible without touching the global torch RNG.
    """
    if seed is None:
        return _CLASSES[config.arch](config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _CLASSES[config.arch](config)


def build(
    arch: str,
    *,
    features: tuple[int, ...] = DEFAULT_FEATURES,
    n_classes: int = 2,
    in_channels: int = 1,
    norm: str = "instance",
    dropout: float = 0.0,
    seed: int | None = None,
) -> SegmentationNet:
    """A 2-D segmentation network: (B, in_channels, H, W) -> logits (B, n_classes, H, W).

    ``arch`` is one of :data:`ARCHS` ("fcn", "unet", "unetpp"). The network's ``config``
    (a :class:`NetConfig`; ``config.to_dict()`` for a model card) rebuilds it with
    :func:`build_from`. H and W must be multiples of ``2 ** (len(features) - 1)``.

    Raises ValueError for an unknown ``arch`` or ``norm``, or fewer than three ``features``.
    """
    config = NetConfig(
        arch=arch, features=tuple(features), n_classes=n_classes, in_channels=in_channels,
        norm=norm, dropout=dropout,
    )
    return build_from(config, seed=seed)
