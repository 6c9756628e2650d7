"""The small JSON API of the AI page (``/api``): the hierarchy with processing states, the
model library, segmentation jobs, overlays, sending to a PACS, and the node's status.

Everything is scoped to the caller's hospitals and rights like DICOMweb. Patient names and
IDs are shown to callers who may query and are not pseudonymous (as QIDO-RS would show
them); a pseudonymous caller sees the pseudonym only.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel
from sqlalchemy import func, select

from node.access import Access, NotAuthenticatedError, Right
from node.ai import cards
from node.errors import LibraryError
from node.index import browse, schema
from node.index.jobs import JobQueue
from node.index.series_watch import queue_segmentation, segment_params, segmentation_job
from node.layout import ORIGINAL, prediction_model, prediction_name
from node.rendering import render
from node.web.auth import COOKIE, Caller, access_of
from node.web.errors import BadRequest, NotFound

router = APIRouter(prefix="/api")


def _core(request: Request) -> Any:
    return request.app.state.core


@router.get("/whoami")
async def whoami(request: Request) -> dict[str, Any]:
    """Who the page is signed in as; ``signed_in`` false (not a 401) when it is not yet."""
    try:
        access = await access_of(request)
    except NotAuthenticatedError:
        return {"signed_in": False}
    return {"signed_in": True, "name": access.name, "hospitals": access.hospitals,
            "store": access.allows(Right.STORE), "query": access.query,
            "retrieve": access.retrieve, "identified": access.identified}


class TokenIn(BaseModel):
    token: str


@router.post("/session")
def session(body: TokenIn, request: Request) -> Response:
    """Checks a token and keeps it in an HttpOnly cookie for the page's own GETs."""
    access = _core(request).policy.for_token(body.token.strip())
    response = JSONResponse({"name": access.name})
    response.set_cookie(COOKIE, body.token.strip(), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.delete("/session")
def logout() -> Response:
    response = JSONResponse({})
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/hospitals")
def hospitals(request: Request, access: Caller) -> list[dict[str, Any]]:
    access.require(Right.QUERY)
    return browse.hospitals(_core(request).catalog, access.hospitals)


@router.get("/hospitals/{hospital}/patients")
def patients(hospital: str, request: Request, access: Caller) -> list[dict[str, Any]]:
    access.require(Right.QUERY)
    rows = browse.patients(_core(request).catalog, access.hospitals, hospital)
    if not access.identified:
        for row in rows:
            row["patient_id"] = row["patient_name"] = None
    return rows


@router.get("/hospitals/{hospital}/patients/{patient}/studies")
def studies(hospital: str, patient: str, request: Request,
            access: Caller) -> list[dict[str, Any]]:
    access.require(Right.QUERY)
    return browse.studies(_core(request).catalog, access.hospitals, hospital, patient)


@router.get("/studies/{study}/series")
def series(study: str, request: Request, access: Caller) -> list[dict[str, Any]]:
    access.require(Right.QUERY)
    return browse.series(_core(request).catalog, access.hospitals, study)


def _predictions(core: Any, object_key: str) -> list[str]:
    try:
        names = core.fs.ls(object_key, detail=False)
    except FileNotFoundError:
        return []
    models = (prediction_model(str(name).rsplit("/", 1)[-1]) for name in names)
    return sorted(m for m in models if m)


@router.get("/series/{series_uid}/instances")
def instances(series_uid: str, request: Request, access: Caller) -> list[dict[str, Any]]:
    access.require(Right.RETRIEVE)
    core = _core(request)
    rows = browse.instances(core.catalog, access.hospitals, series_uid)
    for row in rows:
        row["predictions"] = _predictions(core, row.pop("object_key"))
    return rows


def _instance(request: Request, access: Access, sop: str) -> dict[str, Any]:
    access.require(Right.RETRIEVE)
    found = browse.instance(_core(request).catalog, access.hospitals, sop)
    if found is None:
        raise NotFound("no such instance")
    return found


@router.get("/instances/{sop}/image.png")
def image(sop: str, request: Request, access: Caller, frame: int = 1) -> Response:
    """The image at its native size (what overlays are drawn on), windowed as its header
    says (or min-max)."""
    found = _instance(request, access, sop)
    data = _core(request).fs.cat_file(f"{found['object_key']}/{ORIGINAL}")
    try:
        png = render(data, frame, fmt="png")
    except ValueError as exc:
        raise NotFound(str(exc)) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private"})


@router.get("/instances/{sop}/prediction.png")
def prediction(sop: str, model: str, request: Request, access: Caller,
               frame: int = 1) -> Response:
    """A model's label map of the image as a grey PNG: 0 background, k the k-th class."""
    found = _instance(request, access, sop)
    try:
        cards.folder(model)  # a valid library id
    except LibraryError as exc:
        raise BadRequest(str(exc)) from None
    key = f"{found['object_key']}/{prediction_name(model)}"
    try:
        labels = np.load(io.BytesIO(_core(request).fs.cat_file(key)), allow_pickle=False)
    except FileNotFoundError:
        raise NotFound("no prediction of this model for this image") from None
    if not 1 <= frame <= labels.shape[0]:
        raise NotFound("no such frame")
    out = io.BytesIO()
    Image.fromarray(labels[frame - 1].astype(np.uint8)).save(out, format="PNG")
    return Response(out.getvalue(), media_type="image/png")


@router.get("/models")
def models(request: Request, access: Caller) -> list[dict[str, Any]]:
    """The library's segmentation networks (the ones that can run), with their cards."""
    del access
    out = []
    for entry in cards.entries(_core(request).fs):
        if entry.kind != "segment":
            continue
        card = entry.card
        data = card.get("data") or {}
        out.append({"id": entry.id, "arch": entry.arch, "created": card.get("created_at"),
                    "init": card.get("init"),  # a library id (its pretraining run) or None
                    "training_images": (data.get("train") or {}).get("count"),
                    "validation_images": (data.get("validation") or {}).get("count"),
                    "validation_dice": (card.get("metrics") or {}).get("val_dice"),
                    "features": (card.get("net") or {}).get("features"),
                    "size": card.get("size"), "classes": card.get("classes")})
    return out


class JobIn(BaseModel):
    series: str
    model: str
    sops: list[str] | None = None


@router.post("/jobs")
def create_job(body: JobIn, request: Request, access: Caller) -> dict[str, Any]:
    """Queues a segmentation of a series (or of some of its images) with a library model."""
    access.require(Right.RETRIEVE)
    access.require(Right.STORE)  # its result, a DICOM SEG, is stored
    core = _core(request)
    try:
        entry = cards.read(core.fs, body.model)
    except LibraryError as exc:
        raise BadRequest(str(exc)) from None
    if entry.kind != "segment":
        raise BadRequest(f"{body.model} is a pretrained encoder, not a segmentation network")
    rows = browse.instances(core.catalog, access.hospitals, body.series)
    if not rows:
        raise NotFound("no such series")
    if body.sops and not set(body.sops) <= {r["sop_uid"] for r in rows}:
        raise BadRequest("the images are not all in this series")
    queue_segmentation(core.catalog, body.series, body.model, body.sops)
    return job(body.series, request, access)


@router.get("/jobs/{series_uid}")
def job(series_uid: str, request: Request, access: Caller) -> dict[str, Any]:
    """The segmentation of a series: queued / running / failed (with the reason) while its
    job exists, else done or none; progress counts the images with the model's prediction."""
    access.require(Right.RETRIEVE)
    core = _core(request)
    rows = browse.instances(core.catalog, access.hospitals, series_uid)
    if not rows:
        raise NotFound("no such series")
    found = segmentation_job(core.catalog, series_uid)
    model = segment_params(found["params"] or "")[0] if found else request.query_params.get(
        "model")
    done = 0
    if model:
        done = sum(1 for r in rows if model in _predictions(core, r["object_key"]))
    state = found["state"] if found else ("done" if done else "none")
    return {"series": series_uid, "state": state, "error": found["error"] if found else None,
            "model": model, "done": done, "total": len(rows)}


@router.get("/destinations")
def destinations(request: Request, access: Caller) -> list[dict[str, Any]]:
    del access
    return [{"ae_title": d.ae_title, "host": d.host, "port": d.port}
            for d in _core(request).settings.destinations]


class SendIn(BaseModel):
    series: str
    destination: str


@router.post("/send")
def send(body: SendIn, request: Request, access: Caller) -> dict[str, Any]:
    """Sends a series (C-STORE) to a configured destination; says how it went."""
    access.require(Right.RETRIEVE)
    core = _core(request)
    from node.archive import Archive

    refs = [r for r in Archive(core).instances(access.hospitals, _study_of(core, access,
                                                                          body.series),
                                               body.series)]
    if core.sender is None:
        raise BadRequest("this node cannot send (no DIMSE edge)")
    report = core.sender(body.destination, refs)
    return {"destination": report.destination, "sent": report.sent, "failed": report.failed}


def _study_of(core: Any, access: Access, series_uid: str) -> str:
    rows = browse.instances(core.catalog, access.hospitals, series_uid)
    if not rows:
        raise NotFound("no such series")
    return str(rows[0]["study_uid"])


@router.get("/status")
def status(request: Request, access: Caller) -> dict[str, Any]:
    """Queue depth, instances by state, recent errors and the ingest rate of the last
    minute (no PHI: UIDs and messages only)."""
    del access
    core = _core(request)
    queue = JobQueue(core.catalog)
    counts = queue.counts()
    since = datetime.now(UTC) - timedelta(seconds=60)
    recent = core.catalog.reading("counting recent arrivals", lambda conn: conn.scalar(
        select(func.count()).select_from(schema.instances)
        .where(schema.instances.c.received_at >= since)))
    return {"queue_depth": counts.queue_depth, "jobs": counts.jobs,
            "instances": counts.instances, "blank": counts.blank,
            "received_last_minute": int(recent or 0),
            "errors": [{"target": t, "error": e} for t, e in queue.failures(10)]}
