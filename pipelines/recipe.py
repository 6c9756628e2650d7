"""Preprocessing recipes: named, versioned, frozen parameter sets (later read from TOML sections).

A recipe's id, ``name@version#hash``, changes whenever any parameter changes, so an output can
always be traced to the exact parameters that made it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Window = tuple[float, float] | Literal["header"] | None
"""No window (min-max per frame), a fixed (center, width), or the header's first window."""

DTYPES = ("float16", "float32")
_KEYS = ("name", "version", "size", "keep_aspect", "window", "dtype")


@dataclass(frozen=True)
class Recipe:
    """How a decoded image becomes the AI input.

    ``size`` is the side of the square output (``None``: keep the native size, no resize);
    ``keep_aspect`` scales the longer side to ``size`` and pads with zeros (else stretches).
    """

    name: str = "default"
    version: str = "1"
    size: int | None = 512
    keep_aspect: bool = True
    window: Window = None
    dtype: str = "float16"

    def __post_init__(self) -> None:
        _check(self)

    @property
    def recipe_id(self) -> str:
        """``name@version#hash``: the hash covers every parameter but name and version."""
        params = {"size": self.size, "keep_aspect": self.keep_aspect,
                  "window": list(self.window) if isinstance(self.window, tuple) else self.window,
                  "dtype": self.dtype}
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.name}@{self.version}#{digest}"

    def to_mapping(self) -> dict[str, Any]:
        """The recipe as ``from_mapping`` reads it (TOML/JSON-ready values)."""
        window: Any = list(self.window) if isinstance(self.window, tuple) else (
            self.window or "none")
        return {"name": self.name, "version": self.version,
                "size": "native" if self.size is None else self.size,
                "keep_aspect": self.keep_aspect, "window": window, "dtype": self.dtype}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Recipe:
        """A recipe from a mapping (a TOML section).

        ``size`` may be ``"native"``; ``window`` may be ``"none"``, ``"header"`` or
        ``[center, width]``. Raises ``ValueError`` naming the first unknown key or bad value.
        """
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ValueError(f"recipe: unknown key {unknown[0]!r}")
        kwargs: dict[str, Any] = dict(data)
        if "version" in kwargs and isinstance(kwargs["version"], int) \
                and not isinstance(kwargs["version"], bool):
            kwargs["version"] = str(kwargs["version"])
        if kwargs.get("size") == "native":
            kwargs["size"] = None
        window = kwargs.get("window")
        if window == "none":
            kwargs["window"] = None
        elif isinstance(window, list | tuple):
            if len(window) != 2 or not all(_is_number(v) for v in window):
                raise ValueError("recipe: bad value for 'window': want [center, width]")
            kwargs["window"] = (float(window[0]), float(window[1]))
        return cls(**kwargs)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(r: Recipe) -> None:
    if not isinstance(r.name, str) or not r.name or any(c in r.name for c in "@#"):
        raise ValueError("recipe: bad value for 'name': a non-empty string without '@' or '#'")
    if not isinstance(r.version, str) or not r.version or any(c in r.version for c in "@#"):
        raise ValueError("recipe: bad value for 'version': a non-empty string or an integer")
    if r.size is not None and (not isinstance(r.size, int) or isinstance(r.size, bool)
                               or not 8 <= r.size <= 8192):
        raise ValueError("recipe: bad value for 'size': an integer in 8..8192 or 'native'")
    if not isinstance(r.keep_aspect, bool):
        raise ValueError("recipe: bad value for 'keep_aspect': true or false")
    w = r.window
    if not (w is None or w == "header" or (
            isinstance(w, tuple) and len(w) == 2 and all(_is_number(v) for v in w)
            and w[1] > 0)):
        raise ValueError("recipe: bad value for 'window': 'none', 'header' or [center, width>0]")
    if r.dtype not in DTYPES:
        raise ValueError(f"recipe: bad value for 'dtype': one of {', '.join(DTYPES)}")
