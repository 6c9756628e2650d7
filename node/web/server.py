"""Running the HTTP app: uvicorn in a thread of the serving process, on a socket bound here
(so that port 0 gives a free port and the port is known before the first request)."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any

import uvicorn

from node.settings import HttpSettings

log = logging.getLogger("support_node.web")


class WebServer:
    """uvicorn serving ``app`` on ``settings.host:port`` in a background thread."""

    def __init__(self, app: Any, settings: HttpSettings, port: int) -> None:
        self.settings = settings
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((settings.host, port))
        except OSError:
            self.socket.close()
            raise
        self.port: int = self.socket.getsockname()[1]
        options: dict[str, Any] = {"log_level": "warning", "access_log": False,
                                   "lifespan": "off", "timeout_graceful_shutdown": 5,
                                   "server_header": False}
        if settings.tls_cert and settings.tls_key:
            options.update(ssl_certfile=str(settings.tls_cert),
                           ssl_keyfile=str(settings.tls_key),
                           ssl_version=ssl.PROTOCOL_TLS_SERVER)
        self._server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self.socket]},
                                        name="http", daemon=True)

    @property
    def url(self) -> str:
        """The DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``."""
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        return f"{self.settings.scheme}://{host}:{self.port}/dicom-web"

    def start(self, timeout: float = 10.0) -> None:
        """Starts serving; returns once uvicorn accepts connections. Raises OSError."""
        self.socket.listen(128)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the HTTP server did not start on port {self.port}")
            time.sleep(0.02)
        log.info("HTTP listening on %s", self.url)

    def shutdown(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
        self.socket.close()
