"""Errors raised by the pure-compute pipelines.

Tree::

    PipelineError (Exception)
    ├── NotAnImage        the object has no pixel data (SR, presentation state, RT plan, ...)
    └── UndecodableError  the object claims pixels, but they cannot be read; ``reason`` says why

The service layer translates these once, at its edge, into an instance's processing state.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of the pipelines' errors."""


class NotAnImage(PipelineError):
    """The object carries no pixel data, so there is nothing to preprocess."""


class UndecodableError(PipelineError):
    """The pixel data (or the object itself) cannot be decoded; ``reason`` is for people."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
