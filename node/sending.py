"""Sending stored instances to another DICOM node, protocol-free.

The core holds a :class:`Sender` (the DIMSE edge provides one, ``node.dimse.send``; the
composition root hands it over), so that the web edge can offer "send to PACS" without
knowing DIMSE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from node.errors import NodeError
from node.index.query import InstanceRef


class UnknownDestinationError(NodeError):
    """A destination that is not configured in ``[destinations]``."""


class DestinationUnavailableError(NodeError):
    """The destination could not be reached or refused the association."""


@dataclass(frozen=True)
class SendReport:
    """How a send went: instances sent and failed, and the destination's AE title."""

    destination: str
    sent: int
    failed: int


class Sender(Protocol):
    def __call__(self, destination: str, refs: Sequence[InstanceRef]) -> SendReport:
        """Sends the originals of ``refs`` to ``destination`` (an AE title of
        ``[destinations]``). Raises UnknownDestinationError, DestinationUnavailableError."""
        ...
