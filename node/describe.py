"""description.json: what the node knows about an instance, enough to rebuild the index.

Encrypted like every object. Holds the DICOM JSON model of the header (no pixel data)
and the facts of receipt: sha256 and size of the original, transfer syntax, calling AE,
time received, and any UID the node had to derive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from node.dicom.header import Header
from node.dicom.jsonmodel import to_json
from node.index import attributes
from node.index.records import ConflictRecord, InstanceRecord, State
from node.layout import InstancePath

FORMAT = 1


@dataclass(frozen=True)
class Receipt:
    """How and when an instance arrived."""

    sha256: str
    size: int
    calling_ae: str
    via: str
    received_at: datetime


def build(header: Header, path: InstancePath, receipt: Receipt,
          dicom: dict[str, Any] | None = None) -> dict[str, Any]:
    """The description document of one instance (``dicom``: its JSON model, if made already)."""
    return {
        "format": FORMAT,
        "object_key": path.folder,
        "hospital": path.hospital,
        "patient": path.patient,
        "study_uid": path.study,
        "series_uid": path.series,
        "sop_uid": path.sop,
        "original": {
            "sha256": receipt.sha256,
            "size": receipt.size,
            "transfer_syntax": header.transfer_syntax,
            "has_file_meta": header.has_file_meta,
            "has_pixels": header.has_pixels,
        },
        "received": {
            "at": receipt.received_at.isoformat(),
            "calling_ae": receipt.calling_ae,
            "via": receipt.via,
        },
        "derived_uids": list(header.derived),
        "dicom": dicom if dicom is not None else to_json(header.dataset),
    }


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(data: bytes) -> dict[str, Any]:
    """Raises ValueError when ``data`` is not a description this node wrote."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a support-node description")
    return doc


# Index attributes and their tags, read from the DICOM JSON model (node.index.attributes).
_TEXT_TAGS = {a.field: a.tag for a in attributes.DESCRIBED if not a.integer}
_INT_TAGS = {a.field: a.tag for a in attributes.DESCRIBED if a.integer}


def _text(dicom: dict[str, Any], tag: str) -> str | None:
    values = dicom.get(tag, {}).get("Value")
    if not values:
        return None
    parts = []
    for v in values:
        if isinstance(v, dict):  # PN: groups joined back with "=" as in the DICOM string
            groups = [v.get(k, "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
            v = "=".join(groups).rstrip("=")
        parts.append("" if v is None else str(v))
    joined = "\\".join(parts).strip()
    return joined or None


def _int(dicom: dict[str, Any], tag: str) -> int | None:
    values = dicom.get(tag, {}).get("Value")
    try:
        return int(values[0]) if values and values[0] is not None else None
    except (TypeError, ValueError):
        return None


def record(dicom: dict[str, Any], path: InstancePath, receipt: Receipt,
           transfer_syntax: str, sop_class_uid: str,
           processing: dict[str, Any] | None = None,
           labels: dict[str, Any] | None = None) -> InstanceRecord:
    """The index record of an instance from its DICOM JSON model and where it is stored.

    ``processing``: the description's processing section, when it has one; without it the
    instance is queued for processing.
    """
    done = processing or {}
    state = str(done["state"]) if done.get("state") in State.ALL else State.QUEUED
    fields: dict[str, Any] = {k: _text(dicom, t) for k, t in _TEXT_TAGS.items()}
    fields.update({k: _int(dicom, t) for k, t in _INT_TAGS.items()})
    return InstanceRecord(
        hospital=path.hospital,
        patient_key=path.patient,
        study_uid=path.study,
        series_uid=path.series,
        sop_uid=path.sop,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=transfer_syntax,
        object_key=path.folder,
        sha256=receipt.sha256,
        size=receipt.size,
        calling_ae=receipt.calling_ae,
        received_at=receipt.received_at,
        state=state,
        blank=(done.get("filter") or {}).get("blank"),
        recipe_id=done.get("recipe_id"),
        labels=(labels or {}).get("source"),
        **fields,
    )


def receipt_of(doc: dict[str, Any]) -> Receipt:
    received = doc["received"]
    return Receipt(
        sha256=doc["original"]["sha256"],
        size=int(doc["original"]["size"]),
        calling_ae=received.get("calling_ae", ""),
        via=received.get("via", ""),
        received_at=datetime.fromisoformat(received["at"]),
    )


def record_from(doc: dict[str, Any]) -> InstanceRecord:
    """Rebuilds the index record from a stored description alone (``reindex``)."""
    path = InstancePath.parse(doc["object_key"])
    dicom = doc["dicom"]
    return record(dicom, path, receipt_of(doc), doc["original"]["transfer_syntax"],
                  _text(dicom, "00080016") or "", doc.get("processing"), doc.get("labels"))


def conflict_from(doc: dict[str, Any], folder: str) -> ConflictRecord:
    """The conflict record of a description kept under ``.../conflicts/{sha256}``."""
    r = receipt_of(doc)
    return ConflictRecord(sop_uid=doc["sop_uid"], sha256=r.sha256, size=r.size,
                          object_key=folder, calling_ae=r.calling_ae, received_at=r.received_at)
