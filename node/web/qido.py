"""QIDO-RS: searches for studies, series and instances (PS3.18 10.6), on the same query
engine as C-FIND, relational (no unique keys needed above the level), scoped to the caller's
hospital.

Parameters: attribute keywords or 8-digit hex tags with the values to match (C-FIND's
matching: wildcards, ranges; UID lists comma- or backslash-separated); ``includefield``
(repeated or comma-separated keywords or tags, or ``all``); ``limit`` / ``offset`` (paging
in the order of the unique keys, so that asking until a page is empty ends);
``fuzzymatching`` ``true`` or ``false`` (person names always match case-insensitively).
An unknown parameter or a bad value is 400.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from node.access import Access, Right
from node.index.attributes import BY_KEYWORD, Level, Match
from node.index.audit import Entry, scope
from node.index.query import Query, build, run
from node.web import dicomjson
from node.web.auth import Caller
from node.web.errors import BadRequest

router = APIRouter()
MEDIA_TYPE = "application/dicom+json"
_CONTROL = {"includefield", "limit", "offset", "fuzzymatching"}

# PS3.18 Table 6.7.1-2: the attributes every match returns, by level (those the index holds;
# InstanceAvailability and RetrieveURL are added apart).
DEFAULTS = {
    Level.STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                  "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
                  "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    Level.SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                   "NumberOfSeriesRelatedInstances", "SeriesDate", "SeriesTime",
                   "BodyPartExamined"),
    Level.IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                  "NumberOfFrames", "AvailableTransferSyntaxUID"),
}


def _keyword(key: str) -> str:
    """The keyword of a parameter name (a keyword or an 8-digit hex tag); BadRequest if it is
    neither."""
    if tag_for_keyword(key) is not None:
        return key
    if len(key) == 8:
        try:
            keyword = keyword_for_tag(int(key, 16))
        except ValueError:
            keyword = ""
        if keyword:
            return keyword
    raise BadRequest(f"unknown query parameter {key!r}")


def _split(keyword: str, value: str) -> list[str]:
    attr = BY_KEYWORD.get(keyword)
    if attr is not None and attr.match is Match.UID:
        return [v for part in value.split(",") for v in part.split("\\")]
    return value.split("\\")


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a non-negative integer") from None
    if value < 0:
        raise BadRequest(f"{name} must be a non-negative integer")
    return value


def parse(request: Request, level: Level, fixed: dict[str, str]) -> tuple[Query, list[str]]:
    """Returns the query of a QIDO request and the keywords to return, in order."""
    params = request.query_params
    fuzzy = params.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise BadRequest("fuzzymatching must be true or false")
    keys: list[tuple[str, list[str]]] = [(k, [v]) for k, v in fixed.items()]
    for name, value in params.multi_items():
        if name in _CONTROL:
            continue
        keyword = _keyword(name)
        keys.append((keyword, _split(keyword, value)))
    returns = _returns(level, params.getlist("includefield"))
    query = build(level, keys, returns=[k for k in returns if k in BY_KEYWORD])
    limit, offset = _int_param(params, "limit"), _int_param(params, "offset")
    if limit is not None or offset:
        query = query.page(offset or 0, limit)
    return query, returns


def _returns(level: Level, include: list[str]) -> list[str]:
    levels = [lv for lv in (Level.STUDY, Level.SERIES, Level.IMAGE) if lv.depth <= level.depth]
    out = [k for lv in levels for k in DEFAULTS[lv]]
    for item in include:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            if name == "all":
                out += [a.keyword for a in BY_KEYWORD.values()
                        if a.level.depth <= level.depth]
            else:
                out.append(_keyword(name))
    return list(dict.fromkeys(out))


def _retrieve_url(row: Mapping[str, Any], level: Level) -> str:
    deep = level.depth
    return dicomjson.retrieve_url(
        row["StudyInstanceUID"],
        row["SeriesInstanceUID"] if deep >= Level.SERIES.depth else None,
        row["SOPInstanceUID"] if level is Level.IMAGE else None)


def to_json(row: Mapping[str, Any], returns: list[str], level: Level) -> dict[str, Any]:
    """One match as a DICOM JSON object."""
    doc: dict[str, Any] = {}
    for keyword in returns:
        doc[dicomjson.tag_hex(keyword)] = dicomjson.element(keyword, row.get(keyword))
    doc["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    doc["00081190"] = {"vr": "UR", "Value": [_retrieve_url(row, level)]}
    return dict(sorted(doc.items()))


def search(request: Request, access: Access, level: Level,
           fixed: dict[str, str]) -> StreamingResponse:
    access.require(Right.QUERY)
    query, returns = parse(request, level, fixed)
    if access.hospitals is not None:
        query = query.restricted_to(access.hospitals)
    if not access.identified:
        query = query.pseudonymised()
    core = request.app.state.core
    rows = run(core.catalog, query)
    first = next(rows, None)  # a database failure surfaces here, as a 503, not mid-stream

    def body() -> Iterator[bytes]:
        sent = 0
        yield b"["
        if first is not None:
            yield json.dumps(to_json(first, returns, level)).encode()
            sent = 1
            for row in rows:
                yield b"," + json.dumps(to_json(row, returns, level)).encode()
                sent += 1
        yield b"]"
        if core.audit is not None:  # the keys matched on, never their values
            keys = ",".join(c.keyword for c in query.conditions)
            core.audit.record(Entry(
                "query", "web", access.name, f"{sent} matches", scope(access.hospitals),
                count=sent, detail=f"{level.value} level" + (f" keys {keys}" if keys else "")))

    return StreamingResponse(body(), media_type=MEDIA_TYPE)


@router.get("/studies")
def studies(request: Request, access: Caller) -> StreamingResponse:
    return search(request, access, Level.STUDY, {})


@router.get("/series")
def all_series(request: Request, access: Caller) -> StreamingResponse:
    return search(request, access, Level.SERIES, {})


@router.get("/instances")
def all_instances(request: Request, access: Caller) -> StreamingResponse:
    return search(request, access, Level.IMAGE, {})


@router.get("/studies/{study}/series")
def study_series(study: str, request: Request,
                 access: Caller) -> StreamingResponse:
    return search(request, access, Level.SERIES, {"StudyInstanceUID": study})


@router.get("/studies/{study}/instances")
def study_instances(study: str, request: Request,
                    access: Caller) -> StreamingResponse:
    return search(request, access, Level.IMAGE, {"StudyInstanceUID": study})


@router.get("/studies/{study}/series/{series}/instances")
def series_instances(study: str, series: str, request: Request,
                     access: Caller) -> StreamingResponse:
    return search(request, access, Level.IMAGE,
                  {"StudyInstanceUID": study, "SeriesInstanceUID": series})
