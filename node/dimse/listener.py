"""The listening socket of the DIMSE SCP: strangers are bounded before they are associations.

pynetdicom's own server counts every open connection against the association limit and
waits 30 s (the ACSE timeout) for a request, so eleven idle TCP connections locked every
caller out for as long as they stayed open, without a log line. Here:

* a connection from an address that already holds ``max_connections_per_address`` is
  closed at once (logged);
* a new connection has ``association_request_timeout`` seconds to finish its TLS handshake
  (TLS listener) and send its A-ASSOCIATE-RQ; otherwise it is closed (logged), and it never
  takes a place among ``max_associations`` (``node.dimse.gate`` counts admitted ones);
* the TLS handshake runs in the connection's own thread, never in the accept loop, so a
  client that stalls in it (or speaks plain DICOM to the TLS port) blocks nobody else;
* the port can be shared by several receiving processes (SO_REUSEPORT).
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from node.dimse.limits import ConnectionLimit
from node.dimse.tls import failure_reason

log = logging.getLogger("support_node.dimse")


class _Handler(RequestHandler):
    """Runs one connection's association in the connection's thread, to its end."""

    server: Listener

    def handle(self) -> None:
        assoc = self._create_association()
        # The wait for the A-ASSOCIATE-RQ (and pynetdicom's ARTIM timer) is short until the
        # gate admits the request; the gate then restores the ordinary ACSE timeout.
        assoc.acse_timeout = self.server.request_timeout
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()
        if assoc.requestor.primitive is None:
            # Silent, stalled mid-PDU, or closed by the peer: pynetdicom tells them apart
            # only in its state machine, and holds each for the whole wait.
            log.warning("a connection from %s ended without an association request within "
                        "%g s (dimse.association_request_timeout)", self.client_address[0],
                        self.server.request_timeout)


class Listener(ThreadedAssociationServer):
    """An association server with the bounds of the module docstring.

    Built by ``AE.make_server(..., server_class=Listener, limit=..., request_timeout=...,
    reuse_port=...)``; ``ssl_context`` makes it the TLS listener.
    """

    daemon_threads = True  # a connection's thread never holds up shutdown
    block_on_close = False

    def __init__(self, ae: Any, address: Any, ae_title: str, contexts: Any,
                 ssl_context: ssl.SSLContext | None = None,
                 evt_handlers: list[Any] | None = None, *, limit: ConnectionLimit,
                 request_timeout: float, reuse_port: bool = False) -> None:
        self.limit = limit
        self.request_timeout = request_timeout
        self.reuse_port = reuse_port
        super().__init__(ae, address, ae_title, contexts, ssl_context,
                         evt_handlers=evt_handlers, request_handler=_Handler)

    def server_bind(self) -> None:
        assert self.socket is not None
        if self.reuse_port:  # the kernel hands each new connection to one of the processes
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[Any, Any]:
        """Accepts a connection; a TLS one is wrapped, its handshake left to its thread."""
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """The per-address limit, checked in the accept loop (a refusal costs no thread)."""
        address = str(client_address[0])
        if self.limit.take(address):
            return True
        log.warning("refused a connection from %s: it already holds %d connections "
                    "(dimse.max_connections_per_address)", address, self.limit.per_address)
        return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread: TLS handshake, then its association, within bounds."""
        address = str(client_address[0])
        try:
            request.settimeout(self.request_timeout)
            if isinstance(request, ssl.SSLSocket) and not self._handshake(request, address):
                return
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.limit.give_back(address)

    def _handshake(self, request: ssl.SSLSocket, address: str) -> bool:
        try:
            request.do_handshake()
        except (OSError, ValueError) as exc:  # ssl.SSLError, timeout, reset, closed
            reason = "timed out" if isinstance(exc, TimeoutError) else failure_reason(exc)
            log.warning("refused a TLS connection from %s: handshake failed (%s)",
                        address, reason)
            return False
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection from %s failed", client_address[0])
