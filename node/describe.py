"""description.json: what the node knows about an instance, enough to rebuild the index.

Encrypted like every object. Holds the DICOM JSON model of the header (no pixel data)
and the facts of receipt: sha256 and size of the original, transfer syntax, calling AE,
time received, and any UID the node had to derive.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset

from node.dicom.header import Header, integer, text, to_json
from node.index.records import ConflictRecord, InstanceRecord
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


def build(header: Header, path: InstancePath, receipt: Receipt) -> dict[str, Any]:
    """The description document of one instance."""
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
        "dicom": to_json(header.dataset),
    }


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(data: bytes) -> dict[str, Any]:
    """Raises ValueError when ``data`` is not a description this node wrote."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a support-node description")
    return doc


def record(header_ds: Dataset, path: InstancePath, receipt: Receipt,
           transfer_syntax: str, sop_class_uid: str) -> InstanceRecord:
    """The index record of an instance from its header and where it is stored."""
    ds = header_ds
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
        patient_id=text(ds, "PatientID"),
        issuer_of_patient_id=text(ds, "IssuerOfPatientID"),
        patient_name=text(ds, "PatientName"),
        patient_birth_date=text(ds, "PatientBirthDate"),
        patient_sex=text(ds, "PatientSex"),
        study_date=text(ds, "StudyDate"),
        study_time=text(ds, "StudyTime"),
        accession_number=text(ds, "AccessionNumber"),
        study_id=text(ds, "StudyID"),
        study_description=text(ds, "StudyDescription"),
        referring_physician_name=text(ds, "ReferringPhysicianName"),
        modality=text(ds, "Modality"),
        series_number=integer(ds, "SeriesNumber"),
        series_description=text(ds, "SeriesDescription"),
        series_date=text(ds, "SeriesDate"),
        series_time=text(ds, "SeriesTime"),
        body_part_examined=text(ds, "BodyPartExamined"),
        instance_number=integer(ds, "InstanceNumber"),
        number_of_frames=integer(ds, "NumberOfFrames"),
        rows=integer(ds, "Rows"),
        columns=integer(ds, "Columns"),
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = Dataset.from_json(doc["dicom"], bulk_data_uri_handler=lambda *_: b"")
    path = InstancePath.parse(doc["object_key"])
    return record(ds, path, receipt_of(doc), doc["original"]["transfer_syntax"],
                  str(ds.get("SOPClassUID", "")))


def conflict_from(doc: dict[str, Any], folder: str) -> ConflictRecord:
    """The conflict record of a description kept under ``.../conflicts/{sha256}``."""
    r = receipt_of(doc)
    return ConflictRecord(sop_uid=doc["sop_uid"], sha256=r.sha256, size=r.size,
                          object_key=folder, calling_ae=r.calling_ae, received_at=r.received_at)
