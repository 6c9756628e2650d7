"""Plain records that cross the index boundary (no SQLAlchemy types leak out)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


class State:
    """An instance's processing state (``instances.state``)."""

    QUEUED = "queued"  # stored; its processing job waits for a worker
    PROCESSED = "processed"  # output.npy, preview.png and the filter verdict written
    NOT_IMAGE = "not_image"  # no pixel data (SR, presentation state, ...): described only
    UNDECODABLE = "undecodable"  # pixel data that cannot be decoded; the description says why
    FAILED = "failed"  # processing failed every attempt; ``support-node reprocess`` retries
    LABELS = "labels"  # a DICOM SEG: its segments became label maps of its source images
    ALL = (QUEUED, PROCESSED, NOT_IMAGE, UNDECODABLE, FAILED, LABELS)


@dataclass(frozen=True)
class InstanceRecord:
    """One stored instance with the attributes queries match on.

    DICOM strings are kept as received (DA as YYYYMMDD, TM as HHMMSS.FFFFFF, PN as
    ``Family^Given``); absent attributes are ``None``. ``object_key`` is the instance's
    folder in the store (``hospital/patient/study/series/sop``), without a trailing slash.
    """

    hospital: str
    patient_key: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    sha256: str
    size: int
    calling_ae: str
    received_at: datetime
    # patient level
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    # study level
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_description: str | None = None
    referring_physician_name: str | None = None
    # series level
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    series_date: str | None = None
    series_time: str | None = None
    body_part_examined: str | None = None
    images_in_acquisition: int | None = None  # (0020,1002): the series' expected count
    # instance level
    instance_number: int | None = None
    number_of_frames: int | None = None
    rows: int | None = None
    columns: int | None = None
    state: str = State.QUEUED
    blank: bool | None = None
    recipe_id: str | None = None
    labels: str | None = None  # the source of its label map, if it has one


@dataclass(frozen=True)
class ConflictRecord:
    """A second, different instance that arrived under an already stored SOP Instance UID."""

    sop_uid: str
    sha256: str
    size: int
    object_key: str
    calling_ae: str
    received_at: datetime
