"""Socket tuning for the receive path.

pynetdicom reads a PDU in 4 KiB ``recv`` calls; with a 1 MiB maximum PDU that is 256
system calls and copies per PDU. Reading the whole PDU with ``recv_into`` into one
buffer roughly halves the per-instance cost (ENVIRONMENT.md: ~140/s -> ~205/s).

Senders such as dcmtk's storescu leave Nagle's algorithm on; a receiver that delays
its ACKs then makes every small instance wait ~40 ms. ``TCP_QUICKACK`` is not sticky on
Linux, so it is re-armed after every read.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom.transport import AssociationSocket

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class WholeReadSocket(AssociationSocket):
    """An AssociationSocket that reads each request in as few system calls as it can."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        assert sock is not None
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        nr_read = 0
        while nr_read < nr_bytes:
            n = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if _QUICKACK is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                except OSError:
                    pass
            if n == 0:  # peer closed: return what arrived, as pynetdicom does
                view.release()
                del buf[nr_read:]
                return buf
            nr_read += n
        return buf


def tune_connection(event: Any) -> None:
    """EVT_CONN_OPEN handler: no Nagle, quick ACKs, whole-PDU reads."""
    assoc_socket = event.assoc.dul.socket
    sock = getattr(assoc_socket, "socket", None)
    if sock is None or not isinstance(assoc_socket, AssociationSocket):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _QUICKACK is not None:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:
        return
    if type(assoc_socket) is AssociationSocket and not hasattr(sock, "pending"):
        # Plain TCP only: SSL sockets keep pynetdicom's own reads.
        assoc_socket.__class__ = WholeReadSocket
