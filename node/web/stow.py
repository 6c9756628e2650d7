"""STOW-RS: ``POST /studies`` and ``/studies/{study}`` (PS3.18 10.5).

The body (``multipart/related; type="application/dicom"``) is parsed as it streams in: one
part at a time is held, in memory and never on disk (no plaintext PHI touches the disk), at
most ``[http] max_instance_bytes``; each part goes through the same ingest as a C-STORE
(whole-data-set checks, durability before success, duplicates, conflicts) as soon as it is
complete, so a 1 GB upload needs the memory of its largest instance, not 1 GB.

Response: ``application/dicom+json`` with ReferencedSOPSequence (stored, duplicates and
conflicts kept apart) and FailedSOPSequence with a FailureReason per failed part. 200 all
stored; 202 some failed; 409 none stored; 503 (Retry-After) when none was stored because the
store or the index is down; 400 an unreadable body; 415 another media type.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pydicom
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from python_multipart.multipart import MultipartParser
from starlette.concurrency import run_in_threadpool

from node import metrics
from node.access import Access, Right
from node.errors import (
    CatalogError,
    InconsistentError,
    IngestError,
    StoreError,
    TooLargeError,
)
from node.ingest import Source
from node.web.auth import Caller
from node.web.dicomjson import retrieve_url
from node.web.errors import BadRequest, UnsupportedMediaType
from node.web.media import parse_media

log = logging.getLogger("support_node.web")
router = APIRouter()
DICOM = "application/dicom"

# Failure reasons (PS3.18 Table 10.5.3-1 / PS3.4 Annex B).
OUT_OF_RESOURCES = 0xA700
SOP_CLASS_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
RETRY_AFTER_S = 30  # while refusing for space or queue (node.pressure)


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    too_large: bool = False


class _Parts:
    """Callbacks of python-multipart's parser: completed parts queue up in ``done``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.done: list[_Part] = []
        self.current = _Part()
        self._name = b""
        self._value = b""

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._begin, "on_part_data": self._data,
                "on_part_end": self._end, "on_header_field": self._field,
                "on_header_value": self._value_cb, "on_header_end": self._header_end}

    def _begin(self) -> None:
        self.current = _Part()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _value_cb(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self.current.headers[self._name.decode("latin-1").strip().lower()] = \
            self._value.decode("latin-1").strip()
        self._name, self._value = b"", b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.current
        if part.too_large:
            return
        if len(part.data) + (end - start) > self.limit:
            part.too_large = True
            part.data = bytearray()
            return
        part.data += data[start:end]

    def _end(self) -> None:
        self.done.append(self.current)


def _boundary(request: Request) -> bytes:
    media = parse_media(request.headers.get("content-type", ""))
    if media.type != "multipart/related":
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom"')
    kind = media.params.get("type")
    if kind is not None and kind.lower() != DICOM:
        raise UnsupportedMediaType(f"parts of type {kind!r} are not supported; send "
                                   f"{DICOM}")
    boundary = media.params.get("boundary")
    if not boundary:
        raise BadRequest("the Content-Type has no boundary")
    return boundary.encode("latin-1")


@dataclass
class _Outcome:
    stored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    unavailable: int = 0  # failures because the store or the index is down


def _uids(data: bytes) -> tuple[str | None, str | None]:
    """SOP Class and Instance UIDs of a part, when its header can be read at all."""
    try:
        ds = pydicom.dcmread(io.BytesIO(bytes(data)), force=True, stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return str(ds.get("SOPClassUID", "")) or None, str(ds.get("SOPInstanceUID", "")) or None
    except Exception:
        return None, None


def _ref(cls: str | None, uid: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if cls:
        item["00081150"] = {"vr": "UI", "Value": [cls]}
    if uid:
        item["00081155"] = {"vr": "UI", "Value": [uid]}
    return {**item, **extra}


def _store_part(request: Request, part: _Part, access: Access, study: str | None,
                outcome: _Outcome) -> None:
    """Ingests one part (in a worker thread) and records its outcome."""
    core = request.app.state.core
    data = bytes(part.data)
    part.data = bytearray()
    if part.too_large:
        log.warning("STOW-RS from %s: a part over the %d-byte limit refused", access.name,
                    core.settings.http.max_instance_bytes)
        _failed(outcome, OUT_OF_RESOURCES)
        return
    if parse_media(part.headers.get("content-type", DICOM)).type != DICOM:
        _failed(outcome, CANNOT_UNDERSTAND)
        return
    metrics.BYTES.labels("web").inc(len(data))
    assert access.hospital is not None  # access.require(Right.STORE) passed
    try:
        result = core.ingest.accept(data, Source(access.hospital, "web", access.name),
                                    study_uid=study,
                                    max_bytes=core.settings.http.max_instance_bytes)
    except (IngestError, StoreError, CatalogError) as exc:
        reason = (SOP_CLASS_MISMATCH if isinstance(exc, InconsistentError) else
                  OUT_OF_RESOURCES if isinstance(exc, TooLargeError) else
                  CANNOT_UNDERSTAND if isinstance(exc, IngestError) else OUT_OF_RESOURCES)
        if isinstance(exc, StoreError | CatalogError):
            outcome.unavailable += 1
        log.warning("STOW-RS from %s: a part refused: 0x%04X %s", access.name, reason, exc)
        _failed(outcome, reason, *_uids(data))
        return
    metrics.INSTANCES.labels("web", result.outcome.value).inc()
    record = core.catalog.get_instance(result.sop_uid)
    if record is None:  # removed since (a reindex): stored, but nothing to point at
        outcome.stored.append(_ref(_uids(data)[0], result.sop_uid, {}))
        return
    url = retrieve_url(record.study_uid, record.series_uid, record.sop_uid)
    outcome.stored.append(_ref(record.sop_class_uid, record.sop_uid,
                               {"00081190": {"vr": "UR", "Value": [url]}}))


def _failed(outcome: _Outcome, reason: int, cls: str | None = None,
            uid: str | None = None) -> None:
    metrics.INSTANCES.labels("web", "refused").inc()
    outcome.failed.append(_ref(cls, uid, {"00081197": {"vr": "US", "Value": [reason]}}))


async def _receive(request: Request, access: Access, study: str | None) -> Response:
    access.require(Right.STORE)
    pressure = request.app.state.core.pressure
    if pressure is not None and not (reading := pressure.state()).ok:
        # Before the body is read: the sender keeps it and tries again later.
        log.debug("STOW-RS from %s refused for now: %s", access.name, reading.reason)
        metrics.INSTANCES.labels("web", "refused").inc()
        return JSONResponse({"error": f"not accepting instances now: {reading.reason}"},
                            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    boundary = _boundary(request)
    started = time.perf_counter()
    parts = _Parts(request.app.state.core.settings.http.max_instance_bytes)
    parser = MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
    outcome = _Outcome()
    seen = 0
    async for chunk in request.stream():
        try:
            parser.write(chunk)
        except Exception as exc:  # python-multipart's MultipartParseError and kin
            raise BadRequest(f"the multipart body cannot be read: {type(exc).__name__}") \
                from None
        while parts.done:
            seen += 1
            part = parts.done.pop(0)
            await run_in_threadpool(_store_part, request, part, access, study, outcome)
    try:
        parser.finalize()
    except Exception:
        pass  # a missing closing boundary after whole parts: what arrived whole counts
    if seen == 0:
        raise BadRequest("the body holds no part")
    metrics.INGEST_SECONDS.labels("acknowledge").observe(time.perf_counter() - started)
    return _response(outcome, study)


def _response(outcome: _Outcome, study: str | None) -> Response:
    doc: dict[str, Any] = {}
    if study:
        doc["00081190"] = {"vr": "UR", "Value": [retrieve_url(study)]}
    if outcome.stored:
        doc["00081199"] = {"vr": "SQ", "Value": outcome.stored}
    if outcome.failed:
        doc["00081198"] = {"vr": "SQ", "Value": outcome.failed}
    headers: dict[str, str] = {}
    if not outcome.failed:
        status = 200
    elif outcome.stored:
        status = 202
    elif outcome.unavailable == len(outcome.failed):
        status, headers = 503, {"Retry-After": "5"}
    else:
        status = 409
    return JSONResponse(dict(sorted(doc.items())), status_code=status, headers=headers,
                        media_type="application/dicom+json")


@router.post("/studies")
async def stow(request: Request, access: Caller) -> Response:
    return await _receive(request, access, None)


@router.post("/studies/{study}")
async def stow_study(study: str, request: Request,
                     access: Caller) -> Response:
    return await _receive(request, access, study)
