"""Errors of the web edge and the one table that turns every error into an HTTP response.

    WebError (NodeError)          a request the web edge refuses by itself
    ├── BadRequest                400: malformed request, parameter or body
    ├── NotFound                  404: no such study, series, instance or frame (in scope)
    ├── NotAcceptable             406: none of the Accept media types can be produced
    ├── UnsupportedMediaType      415: a body of a media type the route does not take
    └── Conflict                  409

Core errors map by type (:data:`STATUS`): QueryError, MalformedError 400;
NotAuthenticatedError 401 (with ``WWW-Authenticate: Bearer``); NotAllowedError 403;
FileNotFoundError 404; IntegrityError 500 (a stored object failed authentication: never
served); StoreError and CatalogError 503 with ``Retry-After``. Messages carry no PHI.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.access import NotAllowedError, NotAuthenticatedError
from node.errors import CatalogError, IngestError, IntegrityError, NodeError, StoreError
from node.index.query import QueryError

log = logging.getLogger("support_node.web")
RETRY_AFTER_SECONDS = 5


class WebError(NodeError):
    """A request the web edge refuses."""


class BadRequest(WebError):
    pass


class NotFound(WebError):
    pass


class NotAcceptable(WebError):
    def __init__(self, available: list[str]) -> None:
        super().__init__("none of the accepted media types can be produced; available: "
                         + ", ".join(available))
        self.available = available


class UnsupportedMediaType(WebError):
    pass


class Conflict(WebError):
    pass


# Exception type -> HTTP status, most specific first (a test checks every error is reached).
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (BadRequest, 400),
    (QueryError, 400),
    (IngestError, 400),
    (NotAuthenticatedError, 401),
    (NotAllowedError, 403),
    (NotFound, 404),
    (FileNotFoundError, 404),
    (NotAcceptable, 406),
    (Conflict, 409),
    (UnsupportedMediaType, 415),
    (IntegrityError, 500),
    (StoreError, 503),
    (CatalogError, 503),
    (WebError, 400),
    (NodeError, 500),
)


def status_for(exc: BaseException) -> int:
    """The one place where an exception becomes an HTTP status."""
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def response_for(exc: BaseException) -> Response:
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="support-node"'
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if isinstance(exc, FileNotFoundError):
        message = "not found"  # the builtin's message is an object key
    else:
        message = str(exc)
    if status >= 500:
        log.error("HTTP %d: %s: %s", status, type(exc).__name__, message)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def handle(request: Request, exc: Exception) -> Response:
    """The app's exception handler for every NodeError and FileNotFoundError."""
    del request
    return response_for(exc)
