"""No association may fill the memory with one message: ``[dimse] max_instance_bytes``.

pynetdicom gathers a whole DIMSE message in memory before the C-STORE handler sees it, so a
size check in the handler alone comes after the memory is spent. This guard counts the PDU
bytes received since the last complete message, per association; once they pass the limit
(plus a MiB for command sets and PDU headers) it logs the refusal and resets the connection,
so the sender sees an aborted association and the message is dropped. An instance just
over the limit arrives whole and is refused by ingest with 0xA700 instead.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from typing import Any

from pynetdicom import evt

log = logging.getLogger("support_node.dimse")
_SLACK = 1 << 20


class SizeGuard:
    """Per-association byte counts between complete DIMSE messages."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._received: dict[int, int] = {}
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_DATA_RECV, self._data), (evt.EVT_DIMSE_RECV, self._message),
                (evt.EVT_RELEASED, self._gone), (evt.EVT_ABORTED, self._gone),
                (evt.EVT_CONN_CLOSE, self._gone)]

    def _data(self, event: Any) -> None:
        key = id(event.assoc)
        with self._lock:
            total = self._received.get(key, 0) + len(event.data)
            self._received[key] = total
        if total <= self.max_bytes + _SLACK:
            return
        with self._lock:
            self._received[key] = -(1 << 62)  # cut once: later PDUs never reach the limit
        requestor = event.assoc.requestor
        log.warning("association from %s (%s) aborted: a message passed %d bytes, over "
                    "dimse.max_instance_bytes", requestor.address,
                    str(requestor.ae_title).strip(), self.max_bytes)
        _cut(event.assoc)

    def _message(self, event: Any) -> None:
        with self._lock:
            if self._received.get(id(event.assoc), 0) >= 0:
                self._received[id(event.assoc)] = 0

    def _gone(self, event: Any) -> None:
        with self._lock:
            self._received.pop(id(event.assoc), None)


def _cut(assoc: Any) -> None:
    """Closes the association's connection with a reset, so that the sender stops at once
    (a plain close would leave it blocked writing into a window nobody reads). pynetdicom
    then ends the association as a closed transport (Evt17)."""
    wrapper = getattr(assoc.dul, "socket", None)
    raw = getattr(wrapper, "socket", None)
    if wrapper is None or raw is None:
        return
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed
    wrapper.close()
