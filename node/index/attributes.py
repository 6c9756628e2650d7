"""The one table of indexed DICOM attributes, from which the rest derives.

Each :class:`Attribute` says where an attribute lives (its level, its column in that level's
table, its field of :class:`~node.index.records.InstanceRecord`), how it is read from the DICOM
JSON model of a header (its tag, text or integer) and how queries match it. The schema's
columns, the catalog's record-to-row maps, ``describe.record`` and the query engine (C-FIND,
QIDO-RS, ``ls``) all read this table, so indexing one more attribute is one line here (plus
its field on the record, which a test keeps in step); an older index gains the column at
upgrade.

Three kinds of entries:

* **described** attributes (:data:`DESCRIBED`): read from the header at ingest and reindex,
  stored in a column of their level's table, matched by queries;
* **keys**: the UIDs and the SOP Class / transfer syntax, which identify rows and are written
  by the catalog itself (:data:`KEYS`);
* **computed** return keys: counts and ModalitiesInStudy, kept by the catalog
  (:data:`COMPUTED`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Level(enum.Enum):
    """A level of the DICOM hierarchy; the value is the Query/Retrieve Level code string."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        """Returns 0 for PATIENT down to 3 for IMAGE."""
        return _DEPTH[self]


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


class Match(enum.Enum):
    """How the values of an attribute are matched (PS3.4 C.2.2.2)."""

    UID = "uid"  # single value or a list of UIDs
    DATE = "date"  # single value or a range
    TIME = "time"  # single value or a range
    TEXT = "text"  # case-sensitive; wildcards allowed
    PN = "pn"  # case-insensitive; wildcards allowed
    INT = "int"  # single value
    MODALITIES = "modalities"  # any series of the study has one of the modalities
    RETURN_ONLY = "return only"  # computed; never matched


@dataclass(frozen=True)
class Attribute:
    """One indexed attribute.

    Attributes:
        keyword: the DICOM keyword (``PatientName``).
        tag: the tag as 8 upper-case hex digits (``00100010``), as in the DICOM JSON model.
        level: the level whose table holds it.
        column: its column in that table; empty for a computed patient-level count.
        match: how queries match it.
        field: its field of InstanceRecord; empty for keys and computed attributes.
        indexed: whether its column has an index of its own (frequent matching keys).
        identity: how a pseudonymous caller sees it: ``PSEUDONYM`` (the patient's pseudonym
            instead of the value), ``HIDDEN`` (never returned, never matched) or ``""``.
    """

    keyword: str
    tag: str
    level: Level
    column: str
    match: Match
    field: str = ""
    indexed: bool = False
    identity: str = ""

    @property
    def integer(self) -> bool:
        """Whether the column holds an integer (else text)."""
        return self.match in (Match.INT, Match.RETURN_ONLY)


_P, _ST, _SE, _I = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

#: Attribute.identity values (see node/pseudonym.py for the whole-dataset rules).
PSEUDONYM, HIDDEN = "pseudonym", "hidden"

#: Read from the header, one column each; the order is the order of the schema's columns.
DESCRIBED: tuple[Attribute, ...] = (
    Attribute("PatientID", "00100020", _P, "patient_id", Match.TEXT, "patient_id", True,
              PSEUDONYM),
    Attribute("IssuerOfPatientID", "00100021", _P, "issuer_of_patient_id", Match.TEXT,
              "issuer_of_patient_id", identity=HIDDEN),
    Attribute("PatientName", "00100010", _P, "patient_name", Match.PN, "patient_name", True,
              PSEUDONYM),
    Attribute("PatientBirthDate", "00100030", _P, "birth_date", Match.DATE,
              "patient_birth_date", identity=HIDDEN),
    Attribute("PatientSex", "00100040", _P, "sex", Match.TEXT, "patient_sex"),
    Attribute("StudyDate", "00080020", _ST, "study_date", Match.DATE, "study_date", True),
    Attribute("StudyTime", "00080030", _ST, "study_time", Match.TIME, "study_time"),
    Attribute("AccessionNumber", "00080050", _ST, "accession_number", Match.TEXT,
              "accession_number", True, HIDDEN),
    Attribute("StudyID", "00200010", _ST, "study_id", Match.TEXT, "study_id", identity=HIDDEN),
    Attribute("StudyDescription", "00081030", _ST, "description", Match.TEXT,
              "study_description"),
    Attribute("ReferringPhysicianName", "00080090", _ST, "referring_physician_name", Match.PN,
              "referring_physician_name", identity=HIDDEN),
    Attribute("Modality", "00080060", _SE, "modality", Match.TEXT, "modality", True),
    Attribute("SeriesNumber", "00200011", _SE, "series_number", Match.INT, "series_number"),
    Attribute("SeriesDescription", "0008103E", _SE, "description", Match.TEXT,
              "series_description"),
    Attribute("SeriesDate", "00080021", _SE, "series_date", Match.DATE, "series_date"),
    Attribute("SeriesTime", "00080031", _SE, "series_time", Match.TIME, "series_time"),
    Attribute("BodyPartExamined", "00180015", _SE, "body_part_examined", Match.TEXT,
              "body_part_examined"),
    Attribute("ImagesInAcquisition", "00201002", _SE, "expected_instances", Match.INT,
              "images_in_acquisition"),
    Attribute("InstanceNumber", "00200013", _I, "instance_number", Match.INT,
              "instance_number"),
    Attribute("NumberOfFrames", "00280008", _I, "number_of_frames", Match.INT,
              "number_of_frames"),
    Attribute("Rows", "00280010", _I, "rows", Match.INT, "rows"),
    Attribute("Columns", "00280011", _I, "columns", Match.INT, "columns"),
)

#: Identify rows; written by the catalog from the record's key fields.
KEYS: tuple[Attribute, ...] = (
    Attribute("StudyInstanceUID", "0020000D", _ST, "study_uid", Match.UID),
    Attribute("SeriesInstanceUID", "0020000E", _SE, "series_uid", Match.UID),
    Attribute("SOPInstanceUID", "00080018", _I, "sop_uid", Match.UID),
    Attribute("SOPClassUID", "00080016", _I, "sop_class_uid", Match.UID),
    Attribute("AvailableTransferSyntaxUID", "00083002", _I, "transfer_syntax_uid", Match.UID),
)

#: Kept by the catalog (counts, modalities): returned, never matched (but ModalitiesInStudy).
COMPUTED: tuple[Attribute, ...] = (
    Attribute("NumberOfPatientRelatedStudies", "00201200", _P, "", Match.RETURN_ONLY),
    Attribute("NumberOfPatientRelatedSeries", "00201202", _P, "", Match.RETURN_ONLY),
    Attribute("NumberOfPatientRelatedInstances", "00201204", _P, "", Match.RETURN_ONLY),
    Attribute("ModalitiesInStudy", "00080061", _ST, "modalities_in_study", Match.MODALITIES),
    Attribute("NumberOfStudyRelatedSeries", "00201206", _ST, "number_of_series",
              Match.RETURN_ONLY),
    Attribute("NumberOfStudyRelatedInstances", "00201208", _ST, "number_of_instances",
              Match.RETURN_ONLY),
    Attribute("NumberOfSeriesRelatedInstances", "00201209", _SE, "number_of_instances",
              Match.RETURN_ONLY),
)

ALL: tuple[Attribute, ...] = DESCRIBED + KEYS + COMPUTED
BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ALL}
BY_TAG: dict[str, Attribute] = {a.tag: a for a in ALL}

#: The unique key of each level (PS3.4 C.2.2.1.1).
UNIQUE_KEY = {_P: "PatientID", _ST: "StudyInstanceUID", _SE: "SeriesInstanceUID",
              _I: "SOPInstanceUID"}


def described_at(level: Level) -> tuple[Attribute, ...]:
    """Returns the described attributes whose column is in ``level``'s table."""
    return tuple(a for a in DESCRIBED if a.level is level)


def lookup(key: str) -> Attribute | None:
    """Returns the attribute named by a keyword or an 8-digit hex tag, or None."""
    return BY_KEYWORD.get(key) or BY_TAG.get(key.upper())


__all__ = ["ALL", "BY_KEYWORD", "COMPUTED", "DESCRIBED", "KEYS", "UNIQUE_KEY", "Attribute",
           "Level", "Match", "described_at", "lookup"]
