"""WADO-RS: studies, series and instances back (PS3.18 10.4), decrypted and streamed.

* ``/studies/{s}[/series/{se}[/instances/{i}]]``: ``multipart/related;
  type="application/dicom"``, one instance in memory at a time. ``transfer-syntax=*`` sends
  the stored bytes; none given means Explicit VR Little Endian (compressed pixel data
  decoded; an instance stored so is sent as stored); another explicit syntax is honoured when
  it is the stored one, else 406.
* ``.../metadata``: ``application/dicom+json`` from the stored descriptions (no pixel
  decoding), with host-free ``BulkDataURI``s for pixel data and large values.
* ``.../frames/{list}``: ``multipart/related; type="application/octet-stream"``, a
  ``transfer-syntax=`` on every part; compressed frames as stored with ``*``.
* ``.../bulkdata/{tag}``: a large value of the header, or the pixel data's frames.
* ``.../rendered``, ``.../thumbnail`` (instance, frame; a representative image for series
  and study): JPEG or PNG by Accept; ``window=center,width[,linear]``, ``viewport=w,h``,
  ``quality``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pydicom
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom.uid import UID, ExplicitVRLittleEndian

from node.access import Access, NotAllowedError, Right
from node.archive import Archive
from node.index.audit import Entry, scope
from node.index.query import InstanceRef
from node.layout import InstancePath
from node.pseudonym import allowed_tag, pseudonymise_json
from node.rendering import Window, render
from node.web.auth import Caller
from node.web.dicomjson import retrieve_url
from node.web.errors import BadRequest, NotAcceptable, NotFound
from node.web.media import Multipart, accept_of, choose, related_type

router = APIRouter()
DICOM = "application/dicom"
OCTETS = "application/octet-stream"
_RELATED = "multipart/related"
_ANY = ("*/*", "application/*")  # part types a client may ask for (dicomweb-client: */*)


def _refs(request: Request, access: Access, study: str, series: str | None = None,
          sop: str | None = None) -> list[InstanceRef]:
    """The instances a retrieve asks for, recorded in the audit trail (the route's
    template as detail: what was read, never a value)."""
    audit = request.app.state.core.audit
    route = getattr(request.scope.get("route"), "path", request.url.path)

    def record(outcome: str, count: int | None = None) -> None:
        if audit is not None:
            audit.record(Entry("retrieve", "web", access.name, outcome,
                               scope(access.hospitals), study, series, sop, count, route))

    try:
        access.require(Right.RETRIEVE)
        refs = _archive(request).instances(access.hospitals, study, series, sop)
    except NotAllowedError:
        record("refused: may not retrieve")
        raise
    except FileNotFoundError:
        record("not found")
        raise
    record(f"{len(refs)} instances", len(refs))
    return refs


def _archive(request: Request) -> Archive:
    return Archive(request.app.state.core)


# ---- instances ----------------------------------------------------------------------------


def _wanted_syntax(request: Request) -> str | None:
    """The transfer syntax asked for: ``*`` (as stored), a UID, or None (Explicit VR LE)."""
    media, accepted = choose(accept_of(request.headers, request.query_params), [_RELATED])
    del media
    part = related_type(accepted)
    if part not in (None, DICOM, *_ANY):
        raise NotAcceptable([f'{_RELATED}; type="{DICOM}"'])
    return accepted.params.get("transfer-syntax")


def _instances_response(request: Request, refs: list[InstanceRef],
                        access: Access) -> StreamingResponse:
    wanted = _wanted_syntax(request)
    if wanted not in (None, "*", str(ExplicitVRLittleEndian)):
        stored = {r.transfer_syntax_uid for r in refs}
        if stored != {wanted}:
            raise NotAcceptable([f'{_RELATED}; type="{DICOM}"; transfer-syntax=*',
                                 f'{_RELATED}; type="{DICOM}"; '
                                 f'transfer-syntax={ExplicitVRLittleEndian}'])
    archive = _archive(request)
    body = Multipart(DICOM)

    def one(ref: InstanceRef, explicit_le: bool) -> Any:
        if not access.identified:
            return [archive.pseudonymised(ref, explicit_le)]
        if explicit_le:
            return [archive.to_explicit_le(archive.original(ref))]
        return archive.stream_part10(ref)

    def parts() -> Iterator[bytes]:
        for ref in refs:
            as_stored = wanted not in (None, str(ExplicitVRLittleEndian)) or (
                ref.transfer_syntax_uid == ExplicitVRLittleEndian)
            syntax = ref.transfer_syntax_uid if as_stored else str(ExplicitVRLittleEndian)
            try:
                chunks = one(ref, not as_stored)
            except ValueError:  # cannot decode it: send it as stored, labelled so
                chunks = one(ref, False)
                syntax = ref.transfer_syntax_uid
            yield from body.part(chunks, f"{DICOM}; transfer-syntax={syntax}")
        yield body.end()

    return StreamingResponse(parts(), media_type=body.content_type)


@router.get("/studies/{study}")
def study(study: str, request: Request, access: Caller) -> Response:
    return _instances_response(request, _refs(request, access, study), access)


@router.get("/studies/{study}/series/{series}")
def series(study: str, series: str, request: Request,
           access: Caller) -> Response:
    return _instances_response(request, _refs(request, access, study, series), access)


@router.get("/studies/{study}/series/{series}/instances/{sop}")
def instance(study: str, series: str, sop: str, request: Request,
             access: Caller) -> Response:
    return _instances_response(request, _refs(request, access, study, series, sop), access)


# ---- metadata -----------------------------------------------------------------------------


def metadata_of(ref: InstanceRef, doc: dict[str, Any]) -> dict[str, Any]:
    """The DICOM JSON of one instance from its description, with host-free BulkDataURIs."""
    base = retrieve_url(ref.study_uid, ref.series_uid, ref.sop_uid)
    out: dict[str, Any] = {}
    for tag, element in doc["dicom"].items():
        uri = element.get("BulkDataURI")
        if isinstance(uri, str) and uri.startswith("original.dcm#"):
            element = {**element, "BulkDataURI": f"{base}/bulkdata/{uri.partition('#')[2]}"}
        out[tag] = element
    out["00083002"] = {"vr": "UI", "Value": [ref.transfer_syntax_uid]}
    if doc["original"].get("has_pixels"):
        bits = (out.get("00280100", {}).get("Value") or [16])[0]
        out["7FE00010"] = {"vr": "OW" if bits > 8 else "OB",
                           "BulkDataURI": f"{base}/bulkdata/7FE00010"}
    return dict(sorted(out.items()))


def _metadata(request: Request, refs: list[InstanceRef], access: Access) -> JSONResponse:
    archive = _archive(request)
    docs = [metadata_of(ref, archive.description(ref)) for ref in refs]
    if not access.identified:
        docs = [pseudonymise_json(doc, InstancePath.parse(ref.object_key).patient)
                for doc, ref in zip(docs, refs, strict=True)]
    return JSONResponse(docs, media_type="application/dicom+json")


@router.get("/studies/{study}/metadata")
def study_metadata(study: str, request: Request,
                   access: Caller) -> Response:
    return _metadata(request, _refs(request, access, study), access)


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(study: str, series: str, request: Request,
                    access: Caller) -> Response:
    return _metadata(request, _refs(request, access, study, series), access)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
def instance_metadata(study: str, series: str, sop: str, request: Request,
                      access: Caller) -> Response:
    return _metadata(request, _refs(request, access, study, series, sop), access)


# ---- frames and bulk data -----------------------------------------------------------------


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise BadRequest("frame numbers are integers from 1, comma-separated") from None
    if not numbers or any(n < 1 for n in numbers):
        raise BadRequest("frame numbers are integers from 1, comma-separated")
    return numbers


def _frames_response(request: Request, ref: InstanceRef,
                     numbers: list[int] | None) -> Response:
    media, accepted = choose(accept_of(request.headers, request.query_params), [_RELATED])
    del media
    if related_type(accepted) not in (None, OCTETS, *_ANY):
        raise NotAcceptable([f'{_RELATED}; type="{OCTETS}"; transfer-syntax=*'])
    wanted = accepted.params.get("transfer-syntax")
    as_stored = wanted == "*" or wanted == ref.transfer_syntax_uid
    if wanted not in (None, "*", str(ExplicitVRLittleEndian)) and not as_stored:
        raise NotAcceptable([f'{_RELATED}; type="{OCTETS}"; transfer-syntax=*',
                             f'{_RELATED}; type="{OCTETS}"; '
                             f'transfer-syntax={ExplicitVRLittleEndian}'])
    archive = _archive(request)
    try:
        frames = archive.frames(archive.original(ref), numbers, as_stored=as_stored)
    except ValueError as exc:
        raise NotFound(str(exc)) from None
    body = Multipart(OCTETS)

    def parts() -> Iterator[bytes]:
        for data, syntax in frames:
            yield from body.part([data], f"{OCTETS}; transfer-syntax={syntax}")
        yield body.end()

    return StreamingResponse(parts(), media_type=body.content_type)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}")
def frames(study: str, series: str, sop: str, frames: str, request: Request,
           access: Caller) -> Response:
    numbers = _frame_numbers(frames)
    ref = _refs(request, access, study, series, sop)[0]
    return _frames_response(request, ref, numbers)


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}")
def bulkdata(study: str, series: str, sop: str, tag: str, request: Request,
             access: Caller) -> Response:
    ref = _refs(request, access, study, series, sop)[0]
    if tag.upper() == "7FE00010":  # the pixel data: every frame, read and decrypted once
        return _frames_response(request, ref, None)
    try:
        key = int(tag, 16)
    except ValueError:
        raise BadRequest("a bulk data tag is 8 hex digits") from None
    if not access.identified and not allowed_tag(key):
        raise NotFound("no such bulk data")
    ds = pydicom.dcmread(io.BytesIO(_archive(request).original(ref)), force=True)
    if key not in ds:
        raise NotFound("no such bulk data")
    value = ds[key].value
    data = value if isinstance(value, bytes) else str(value).encode()
    body = Multipart(OCTETS)
    content = b"".join([*body.part([data]), body.end()])
    return Response(content, media_type=body.content_type)


# ---- rendered and thumbnails --------------------------------------------------------------


def _render_params(request: Request, thumbnail: bool) -> tuple[Window | None,
                                                               tuple[int, int] | None, int]:
    params = request.query_params
    window = None
    if "window" in params:
        parts = params["window"].split(",")
        try:
            window = Window(float(parts[0]), float(parts[1]))
        except (ValueError, IndexError):
            raise BadRequest("window is center,width[,function]") from None
        if len(parts) > 2 and parts[2].strip().lower() not in ("linear", "linear_exact"):
            raise BadRequest("only the linear window function is supported")
    viewport = (128, 128) if thumbnail else None
    if "viewport" in params:
        try:
            w, h = (int(v) for v in params["viewport"].split(",")[:2])
        except ValueError:
            raise BadRequest("viewport is width,height in pixels") from None
        if w < 1 or h < 1 or w > 8192 or h > 8192:
            raise BadRequest("viewport sides run from 1 to 8192")
        viewport = (w, h)
    try:
        quality = int(params.get("quality", "90"))
    except ValueError:
        raise BadRequest("quality is 1 to 100") from None
    return window, viewport, quality


def _rendered(request: Request, ref: InstanceRef, frame: int, thumbnail: bool) -> Response:
    media, _ = choose(accept_of(request.headers, request.query_params), ["image/jpeg", "image/png"])
    window, viewport, quality = _render_params(request, thumbnail)
    archive = _archive(request)
    try:
        image = render(archive.original(ref), frame, window, viewport,
                       "png" if media == "image/png" else "jpeg", quality)
    except ValueError as exc:
        raise NotFound(str(exc)) from None
    return Response(image, media_type=media)


def _representative(refs: list[InstanceRef]) -> InstanceRef:
    """The middle image of the first series with images."""
    images = [r for r in refs if not UID(r.sop_class_uid).name.endswith("Storage")
              or "Image" in UID(r.sop_class_uid).name]
    first_series = (images or refs)[0].series_uid
    in_series = [r for r in (images or refs) if r.series_uid == first_series]
    return in_series[len(in_series) // 2]


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
def instance_rendered(study: str, series: str, sop: str, request: Request,
                      access: Caller) -> Response:
    return _rendered(request, _refs(request, access, study, series, sop)[0], 1, False)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered")
def frame_rendered(study: str, series: str, sop: str, frame: int, request: Request,
                   access: Caller) -> Response:
    return _rendered(request, _refs(request, access, study, series, sop)[0], frame, False)


@router.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail")
def instance_thumbnail(study: str, series: str, sop: str, request: Request,
                       access: Caller) -> Response:
    return _rendered(request, _refs(request, access, study, series, sop)[0], 1, True)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/thumbnail")
def frame_thumbnail(study: str, series: str, sop: str, frame: int, request: Request,
                    access: Caller) -> Response:
    return _rendered(request, _refs(request, access, study, series, sop)[0], frame, True)


@router.get("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(study: str, series: str, request: Request,
                     access: Caller) -> Response:
    return _rendered(request, _representative(_refs(request, access, study, series)), 1, True)


@router.get("/studies/{study}/thumbnail")
def study_thumbnail(study: str, request: Request,
                    access: Caller) -> Response:
    return _rendered(request, _representative(_refs(request, access, study)), 1, True)
