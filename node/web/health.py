"""``/healthz`` (no token needed) and ``/metrics`` (Prometheus text format).

``/healthz`` checks what a load balancer or an operator needs to know: the store takes a
write, the index answers, the processing queue depth; 200 when all is well, 503 otherwise,
with a JSON body naming each check (no PHI).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from node import metrics
from node.index.jobs import Counts, JobQueue
from node.web.auth import Caller

router = APIRouter()
_PROBE = "_state/healthz"


def _check_store(core: Any) -> str:
    key = f"{_PROBE}/{secrets.token_hex(4)}"
    core.fs.pipe_file(key, b"ok")
    core.fs.rm_file(key)
    return "ok"


def _check_index(core: Any) -> Counts:
    return JobQueue(core.catalog).counts()


def _checks(core: Any) -> tuple[bool, dict[str, Any]]:
    out: dict[str, Any] = {}
    healthy = True
    counts: Counts | None = None
    for name in ("store", "index"):
        started = time.perf_counter()
        try:
            if name == "store":
                _check_store(core)
            else:
                counts = _check_index(core)
        except Exception as exc:  # any failure is the answer, not a crash
            healthy = False
            out[name] = {"ok": False, "error": type(exc).__name__}
            continue
        out[name] = {"ok": True, "seconds": round(time.perf_counter() - started, 4)}
    if counts is not None:
        out["queue_depth"] = counts.queue_depth
        out["failed"] = counts.instances.get("failed", 0)
    return healthy, out


@router.get("/healthz")
def healthz(request: Request) -> Response:
    healthy, checks = _checks(request.app.state.core)
    workers = getattr(request.app.state, "workers_alive", None)
    if workers is not None:
        alive = workers()
        checks["workers"] = {"ok": alive}
        healthy = healthy and alive
    return JSONResponse({"status": "ok" if healthy else "unavailable", **checks},
                        status_code=200 if healthy else 503)


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
