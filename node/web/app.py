"""The HTTP app, built by a constructor from data: routers, middleware, error handlers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from node import metrics
from node.core import Core
from node.errors import NodeError
from node.web import errors, health, qido, stow, wado

BASE = "/dicom-web"


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
    app.add_exception_handler(NodeError, errors.handle)
    app.add_exception_handler(FileNotFoundError, errors.handle)
    if core.settings.http.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(core.settings.http.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Accept", "Content-Type"])

    @app.middleware("http")
    async def timing(request: Request,
                     call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        metrics.HTTP_SECONDS.labels(_service(request.url.path, request.method)).observe(
            time.perf_counter() - started)
        return response

    return app
