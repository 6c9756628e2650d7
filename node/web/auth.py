"""Who is calling: the bearer token of a request, as an Access from the core's policy.

The token comes in ``Authorization: Bearer``, or, for GET and HEAD only, in the HttpOnly
``sn_token`` cookie that the AI page sets once a person entered it (so that the page's
images and OHIF, served on the same origin, are authorised too). Requests that change
something (STOW-RS, jobs, sends) need the header: a cookie alone cannot make another site
post to the node.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from node.access import Access, NotAuthenticatedError

COOKIE = "sn_token"


async def access_of(request: Request) -> Access:
    """The caller's Access (a FastAPI dependency).

    Raises NotAuthenticatedError (401) for a missing or unknown token where one is needed,
    CatalogError (503) when the index cannot be read.
    """
    header = request.headers.get("authorization")
    secret = None
    if header is None and request.method in ("GET", "HEAD"):
        secret = request.cookies.get(COOKIE) or None
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise NotAuthenticatedError("the Authorization header must be 'Bearer <token>'")
        secret = value.strip()
    policy = request.app.state.core.policy
    return await run_in_threadpool(policy.for_token, secret)


#: A route parameter that receives the caller's Access.
Caller = Annotated[Access, Depends(access_of)]
