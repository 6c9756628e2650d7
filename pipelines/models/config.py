"""The settings that fully describe a segmentation network, so a model card can rebuild it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ARCHS: tuple[str, ...] = ("fcn", "unet", "unetpp")
"""The architectures :func:`pipelines.models.build` knows."""

NORMS: tuple[str, ...] = ("batch", "instance")

DEFAULT_FEATURES: tuple[int, ...] = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild a network: ``build_from(NetConfig.from_dict(card))``.

    ``features`` are the encoder's channel counts, shallow to deep, one per resolution level;
    each level after the first halves the resolution, so H and W must be divisible by
    ``2 ** (len(features) - 1)`` (16 for five levels). ``norm`` is "instance" (the default, as
    in MONAI's BasicUNet: no running statistics to carry from pretraining to fine-tuning, and
    predictions that do not depend on the batch) or "batch" (same speed on the CPU).
    """

    arch: str
    features: tuple[int, ...] = DEFAULT_FEATURES
    n_classes: int = 2
    in_channels: int = 1
    norm: str = "instance"
    dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the settings (not used to build)."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; expected one of {ARCHS}")
        if len(self.features) < 3 or any(int(f) < 1 for f in self.features):
            raise ValueError(f"features must be >= 3 positive channel counts, got {self.features}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        if self.n_classes < 1 or self.in_channels < 1:
            raise ValueError("n_classes and in_channels must be >= 1")
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))

    @property
    def divisor(self) -> int:
        """H and W of an input must be multiples of this."""
        return 2 ** (len(self.features) - 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (features as a list) that :meth:`from_dict` reads back."""
        out = asdict(self)
        out["features"] = list(self.features)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetConfig:
        """The settings written by :meth:`to_dict`; unknown keys raise TypeError."""
        data = dict(data)
        data["features"] = tuple(data.get("features", DEFAULT_FEATURES))
        return cls(**data)

    def norm_arg(self) -> tuple[str, dict[str, Any]]:
        """The MONAI ``norm`` argument for this setting."""
        return ("batch", {}) if self.norm == "batch" else ("instance", {"affine": True})


ACT: tuple[str, dict[str, Any]] = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
"""The activation of every block (MONAI BasicUNet's)."""
