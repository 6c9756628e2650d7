"""One origin for OHIF and any DICOMweb server: the bench's way to show the same OHIF build
the same series from the node and from Orthanc.

OHIF runs cross-origin isolated (COOP/COEP), so it cannot read a DICOMweb server on another
origin that sends no CORP/CORS headers (Orthanc sends none). This small threaded HTTP server
serves the OHIF files with the node's generated ``app-config.js`` and isolation headers, and
forwards ``/dicom-web/...`` to a backend as it is (Host kept, so that absolute BulkDataURIs
point back here). Both servers are measured through it, so the proxy's cost is the same on
both sides.
"""

from __future__ import annotations

import http.client
import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from node.web.viewer import APP_CONFIG, ISOLATION

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-authorization", "proxy-authenticate", "content-length"}


class SameOrigin:
    """Serves ``viewer`` (OHIF's dist) and forwards ``/dicom-web`` to ``backend``
    (``http://127.0.0.1:PORT``) on a free port of 127.0.0.1, until :meth:`close`."""

    def __init__(self, viewer: Path, backend: str) -> None:
        target = urlsplit(backend)
        self.backend = (target.hostname or "127.0.0.1", target.port or 80)
        self.viewer = viewer.resolve()
        self.local = threading.local()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                del format, args

            def do_GET(self) -> None:
                if self.path.startswith("/dicom-web"):
                    owner.forward(self)
                else:
                    owner.serve_file(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(*self.backend, timeout=120)
            self.local.conn = conn
        return conn

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP}
        for attempt in (1, 2):  # a kept-alive connection the backend closed: once more
            conn = self._connection()
            try:
                conn.request("GET", handler.path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    handler.send_error(502)
                    return
        handler.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in _HOP:
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Cross-Origin-Resource-Policy", "same-origin")
        handler.end_headers()
        handler.wfile.write(body)

    def serve_file(self, handler: BaseHTTPRequestHandler) -> None:
        path = urlsplit(handler.path).path.lstrip("/")
        if path == "app-config.js":
            body, media = APP_CONFIG.encode(), "application/javascript"
        else:
            target = (self.viewer / path).resolve()
            if not (path and target.is_file() and target.is_relative_to(self.viewer)):
                if "." in Path(path).name:
                    handler.send_error(404)
                    return
                target = self.viewer / "index.html"
            body = target.read_bytes()
            media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            if target.suffix == ".wasm":
                media = "application/wasm"
        handler.send_response(200)
        handler.send_header("Content-Type", media)
        handler.send_header("Content-Length", str(len(body)))
        for key, value in ISOLATION.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)
