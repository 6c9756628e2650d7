"""The HTTP app, built by a constructor from data: routers, middleware, error handlers."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node import metrics
from node.core import Core
from node.errors import NodeError
from node.web import api, errors, health, qido, stow, viewer, wado

BASE = "/dicom-web"
UI = Path(__file__).parent / "ui"
# The AI page loads nothing from anywhere but this node.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                "style-src 'self'; script-src 'self'; connect-src 'self'; "
                "frame-ancestors 'none'", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}


def _service(path: str, method: str) -> str:
    if not path.startswith(BASE):
        return "other"
    if method == "POST":
        return "stow"
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return "qido" if last in ("studies", "series", "instances") else "wado"


def build_app(core: Core) -> FastAPI:
    """Returns the app serving ``core``: DICOMweb under /dicom-web, /healthz, /metrics."""
    app = FastAPI(title="support-node", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.core = core
    for router in (qido.router, wado.router, stow.router):
        app.include_router(router, prefix=BASE)
    app.include_router(health.router)
    app.include_router(api.router)
    app.mount("/ui", StaticFiles(directory=UI, html=True), name="ui")
    found = viewer.find_viewer(core.settings.http)
    app.state.viewer = found
    if found is not None:
        app.include_router(viewer.router(found))  # last: it answers every other path
    else:
        @app.get("/", include_in_schema=False)
        def home() -> RedirectResponse:
            return RedirectResponse("/ui/")
    app.add_exception_handler(NodeError, errors.handle)
    app.add_exception_handler(FileNotFoundError, errors.handle)
    if core.settings.http.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(core.settings.http.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Accept", "Content-Type"])

    app.add_middleware(Timing)
    return app


class Timing:
    """Times every request into the HTTP latency histogram and adds the AI page's security
    headers. Plain ASGI (not BaseHTTPMiddleware), so streamed bodies pass through untouched
    and a client that goes away mid-stream ends the request at once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        started = time.perf_counter()
        page = path.startswith("/ui")

        async def sending(message: Message) -> None:
            if page and message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in PAGE_HEADERS.items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            metrics.HTTP_SECONDS.labels(_service(path, method)).observe(
                time.perf_counter() - started)
