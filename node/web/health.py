"""``/healthz`` (no token needed) and ``/metrics`` (Prometheus text format).

``/healthz`` checks what a load balancer or an operator needs to know: the store takes a
write, the index answers, the processing queue depth, and whether new instances are
accepted now (node.pressure: free space, queue length); 200 when all is well, 503
otherwise (``"status": "refusing"`` while only back-pressure says no, so that a balancer
sends senders elsewhere), with a JSON body naming each check (no PHI).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from node import metrics
from node.index.jobs import JobQueue
from node.web.auth import Caller

router = APIRouter()
T = TypeVar("T")
_PROBE = "_state/healthz"


def _check_store(core: Any) -> None:
    key = f"{_PROBE}/{secrets.token_hex(4)}"
    core.fs.pipe_file(key, b"ok")
    core.fs.rm_file(key)


def _timed(check: Callable[[], T]) -> tuple[dict[str, Any], T | None]:
    """Runs one check: ({"ok", "seconds"} or {"ok": False, "error"}, its value)."""
    started = time.perf_counter()
    try:
        value = check()
    except Exception as exc:  # any failure is the answer, not a crash
        return {"ok": False, "error": type(exc).__name__}, None
    return {"ok": True, "seconds": round(time.perf_counter() - started, 4)}, value


@router.get("/healthz")
def healthz(request: Request) -> Response:
    core = request.app.state.core
    store, _ = _timed(lambda: _check_store(core))
    index, counts = _timed(lambda: JobQueue(core.catalog).counts())
    checks: dict[str, Any] = {"store": store, "index": index}
    if counts is not None:
        checks["queue_depth"] = counts.queue_depth
        checks["failed"] = counts.instances.get("failed", 0)
    healthy = store["ok"] and index["ok"]
    status = "ok" if healthy else "unavailable"
    if core.pressure is not None:
        reading = core.pressure.state()
        checks["accepting"] = reading.as_dict()
        if healthy and not reading.ok:
            healthy, status = False, "refusing"
    return JSONResponse({"status": status, **checks}, status_code=200 if healthy else 503)


@router.get("/metrics")
def prometheus(request: Request, access: Caller) -> Response:
    del access  # any authenticated caller may read the metrics (no PHI in them)
    try:
        counts = JobQueue(request.app.state.core.catalog).counts()
    except Exception:
        pass  # the gauges keep their last values; /healthz tells what is wrong
    else:
        metrics.QUEUE_DEPTH.set(counts.queue_depth)
        for state, n in counts.instances.items():
            metrics.INSTANCES_BY_STATE.labels(state).set(n)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
