"""Socket tuning for the receive path.

Senders such as dcmtk's storescu (and the PACS built on dcmtk) leave Nagle's algorithm on;
a receiver that delays its ACKs then makes every small instance wait ~40 ms: 22
instances/s for a 128×128 series instead of ~300. ``TCP_QUICKACK`` stops the delay, but
Linux clears it again after reads, so it is re-armed after every read of the association.

pynetdicom's own reads are kept: reading whole PDUs into a fresh buffer was measured
slower for 1 MiB PDUs (bench: 192/s instead of 244/s at 512×512).
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom.transport import AssociationSocket

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class QuickAckSocket(AssociationSocket):
    """An AssociationSocket that acknowledges what it reads at once."""

    def recv(self, nr_bytes: int) -> bytearray:
        data = super().recv(nr_bytes)
        sock = self.socket
        if sock is not None and _QUICKACK is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass  # closing: nothing left to acknowledge
        return data


def tune_connection(event: Any) -> None:
    """EVT_CONN_OPEN handler: no Nagle on our side, quick ACKs on every read."""
    assoc_socket = event.assoc.dul.socket
    sock = getattr(assoc_socket, "socket", None)
    if sock is None or type(assoc_socket) is not AssociationSocket:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _QUICKACK is not None:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:
        return
    assoc_socket.__class__ = QuickAckSocket
