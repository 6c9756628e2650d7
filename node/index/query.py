"""The query engine of the index: DICOM Query/Retrieve identifiers as SQL.

One engine serves C-FIND, C-MOVE and C-GET (and later QIDO-RS and ``ls --patient-name``):
:func:`parse_identifier` turns a request identifier into a :class:`Query`;
:meth:`Query.select` builds one SQLAlchemy Core SELECT over patients > studies > series >
instances at the query level; :func:`run` streams one response :class:`~pydicom.Dataset`
per match, and :func:`instances_for` streams the instances below the matched entities (what
a retrieve sends). Queries read the index only, never the stored objects.

Hierarchical queries only (PS3.4 C.4.1.2.1, C.4.1.3.1.1), in the Patient Root and Study
Root information models. Choices where the standard leaves room, all deliberate:

* **Supported keys.** The attributes the index holds (:data:`SUPPORTED_KEYWORDS`) at the
  query level and the levels above it. Any other attribute in the identifier (unknown,
  private, of a lower level, a count) is *not* used for matching (C.2.2.1: an SCP may
  ignore keys it does not support) but is still returned, empty. Its keyword is listed in
  :attr:`Query.ignored` so that callers can log it.
* **Case.** Single value and wildcard matching are case-sensitive, except for PN
  (PatientName, ReferringPhysicianName), which is matched case-insensitively, as C.2.2.2.1
  allows and as most PACS do. Case folding is the database's ``lower()`` applied to both
  sides (so both sides fold alike): it folds ASCII letters on every dialect, other letters
  where the database's collation does. Trailing ``^`` (empty name components) are not
  significant in single value PN matching. Component groups (``=``) are not split.
* **Wildcards** ``*`` and ``?`` apply to text VRs (AE, CS, LO, PN, SH, ...), not to UIDs,
  dates, times or numbers (refused there). A value of only ``*`` is universal matching (it
  matches empty values too), accepted for every VR since SCUs send it for UIDs and dates
  too. Data characters that are SQL wildcards (``%``, ``_``, the escape ``!``) are escaped.
* **Multiple values.** A list of UIDs matches any of them (C.2.2.2.2). For other text
  keys, multiple values (whose meaning is undefined without extended negotiation, C.2.2.2.8)
  match an entity that matches *any* of them; ModalitiesInStudy ``CT\\MR`` thus finds
  studies with a CT *or* an MR series, as most PACS do.
* **Ranges** for DA and TM: ``A-B``, ``-B``, ``A-``, inclusive; a partial time bound
  (``12``, ``1230``) covers its whole hour or minute at the upper end. When both the date
  and the time of one entity (StudyDate/StudyTime, SeriesDate/SeriesTime) are given and at
  least one is a range, they are one date-time range (C.2.2.2.5.2): ``20240101-20240102``
  with ``2200-0600`` is 1 Jan 22:00 to 2 Jan 06:00.
* **Empty entity values** match only universal matching (and a lone ``*``).
* **Sequences** may be requested as return keys (returned empty); sequence *matching* (an
  item with a non-empty value) is refused.
* **Computed keys** (Number of ... Related ..., ModalitiesInStudy) come from the counts the
  catalog keeps; the counts are return keys only (any value given is ignored).

Responses carry SpecificCharacterSet ``ISO_IR 192`` (values are returned as Unicode text),
QueryRetrieveLevel, the unique keys of the query level and above, InstanceAvailability
``ONLINE`` when asked for, and RetrieveAETitle empty when asked for (the caller fills it).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    FromClause,
    Select,
    and_,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from node.errors import CatalogError, NodeError
from node.index import schema as s
from node.index.engine import describe_error as _describe_db_error  # PHI-free

YIELD_PER = 1000  # rows fetched at a time: 100,000 matches never sit in memory at once
UTF8 = "ISO_IR 192"

# DIMSE statuses of a refused identifier (PS3.4 C.4.1.1.4).
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000

_ESCAPE = "!"  # LIKE escape character: never special in DICOM, unlike "\" (value delimiter)


class QueryError(NodeError):
    """A request identifier the engine refuses.

    Attributes:
        status: the DIMSE status to answer with: 0xA900 (Identifier does not match SOP
            Class: a level the model lacks, a missing or non-single unique key above the
            query level) or 0xC000 (Unable to process: a malformed value, a wildcard where
            none is allowed, sequence matching).
    """

    def __init__(self, message: str, status: int = UNABLE_TO_PROCESS) -> None:
        super().__init__(message)
        self.status = status


class Level(enum.Enum):
    """Query/Retrieve Level (0008,0052); the value is the DICOM code string."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        """Returns 0 for PATIENT down to 3 for IMAGE."""
        return _DEPTH[self]


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


class Model(enum.Enum):
    """Query/Retrieve information model (PS3.4 C.3)."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"

    @property
    def levels(self) -> tuple[Level, ...]:
        """Returns the levels of this model, top first."""
        if self is Model.PATIENT_ROOT:
            return (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
        return (Level.STUDY, Level.SERIES, Level.IMAGE)

    @classmethod
    def for_sop_class(cls, sop_class_uid: str) -> Model:
        """Returns the model of a FIND, MOVE or GET SOP Class UID.

        Raises:
            KeyError: not a Patient Root or Study Root Q/R SOP Class.
        """
        return _MODEL_OF_SOP_CLASS[sop_class_uid]


_MODEL_OF_SOP_CLASS = {
    "1.2.840.10008.5.1.4.1.2.1.1": Model.PATIENT_ROOT,  # FIND
    "1.2.840.10008.5.1.4.1.2.1.2": Model.PATIENT_ROOT,  # MOVE
    "1.2.840.10008.5.1.4.1.2.1.3": Model.PATIENT_ROOT,  # GET
    "1.2.840.10008.5.1.4.1.2.2.1": Model.STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": Model.STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": Model.STUDY_ROOT,
}


class MatchKind(enum.Enum):
    """How one matching key matches (PS3.4 C.2.2.2)."""

    SINGLE = "single value"  # values: (value,)
    WILDCARD = "wildcard"  # values: (pattern with * and ?,)
    LIST = "list"  # values: any of them (each a single value or a wildcard pattern)
    RANGE = "range"  # values: (low, high), "" for an open end


@dataclass(frozen=True)
class Condition:
    """One matching key of a query: ``keyword`` matches ``values`` in the ``kind`` way."""

    keyword: str
    kind: MatchKind
    values: tuple[str, ...]


# ---- supported attributes -------------------------------------------------------------------


class _Kind(enum.Enum):
    """How the values of an attribute are matched."""

    UID = "uid"
    DATE = "date"
    TIME = "time"
    TEXT = "text"  # case-sensitive, wildcards allowed
    PN = "pn"  # case-insensitive, wildcards allowed
    INT = "int"
    MODALITIES = "modalities"  # any series of the study has the modality
    RETURN_ONLY = "return only"  # computed; never matched


@dataclass(frozen=True)
class _Attr:
    keyword: str
    level: Level
    kind: _Kind
    column: ColumnElement[Any] | None  # None: computed (see _computed_column)


_ATTRS: dict[str, _Attr] = {
    a.keyword: a
    for a in (
        _Attr("PatientID", Level.PATIENT, _Kind.TEXT, s.patients.c.patient_id),
        _Attr("IssuerOfPatientID", Level.PATIENT, _Kind.TEXT, s.patients.c.issuer_of_patient_id),
        _Attr("PatientName", Level.PATIENT, _Kind.PN, s.patients.c.patient_name),
        _Attr("PatientBirthDate", Level.PATIENT, _Kind.DATE, s.patients.c.birth_date),
        _Attr("PatientSex", Level.PATIENT, _Kind.TEXT, s.patients.c.sex),
        _Attr("NumberOfPatientRelatedStudies", Level.PATIENT, _Kind.RETURN_ONLY, None),
        _Attr("NumberOfPatientRelatedSeries", Level.PATIENT, _Kind.RETURN_ONLY, None),
        _Attr("NumberOfPatientRelatedInstances", Level.PATIENT, _Kind.RETURN_ONLY, None),
        _Attr("StudyInstanceUID", Level.STUDY, _Kind.UID, s.studies.c.study_uid),
        _Attr("StudyDate", Level.STUDY, _Kind.DATE, s.studies.c.study_date),
        _Attr("StudyTime", Level.STUDY, _Kind.TIME, s.studies.c.study_time),
        _Attr("AccessionNumber", Level.STUDY, _Kind.TEXT, s.studies.c.accession_number),
        _Attr("StudyID", Level.STUDY, _Kind.TEXT, s.studies.c.study_id),
        _Attr("StudyDescription", Level.STUDY, _Kind.TEXT, s.studies.c.description),
        _Attr(
            "ReferringPhysicianName",
            Level.STUDY,
            _Kind.PN,
            s.studies.c.referring_physician_name,
        ),
        _Attr("ModalitiesInStudy", Level.STUDY, _Kind.MODALITIES, s.studies.c.modalities_in_study),
        _Attr(
            "NumberOfStudyRelatedSeries",
            Level.STUDY,
            _Kind.RETURN_ONLY,
            s.studies.c.number_of_series,
        ),
        _Attr(
            "NumberOfStudyRelatedInstances",
            Level.STUDY,
            _Kind.RETURN_ONLY,
            s.studies.c.number_of_instances,
        ),
        _Attr("SeriesInstanceUID", Level.SERIES, _Kind.UID, s.series.c.series_uid),
        _Attr("Modality", Level.SERIES, _Kind.TEXT, s.series.c.modality),
        _Attr("SeriesNumber", Level.SERIES, _Kind.INT, s.series.c.series_number),
        _Attr("SeriesDescription", Level.SERIES, _Kind.TEXT, s.series.c.description),
        _Attr("SeriesDate", Level.SERIES, _Kind.DATE, s.series.c.series_date),
        _Attr("SeriesTime", Level.SERIES, _Kind.TIME, s.series.c.series_time),
        _Attr("BodyPartExamined", Level.SERIES, _Kind.TEXT, s.series.c.body_part_examined),
        _Attr(
            "NumberOfSeriesRelatedInstances",
            Level.SERIES,
            _Kind.RETURN_ONLY,
            s.series.c.number_of_instances,
        ),
        _Attr("SOPInstanceUID", Level.IMAGE, _Kind.UID, s.instances.c.sop_uid),
        _Attr("SOPClassUID", Level.IMAGE, _Kind.UID, s.instances.c.sop_class_uid),
        _Attr(
            "AvailableTransferSyntaxUID",
            Level.IMAGE,
            _Kind.UID,
            s.instances.c.transfer_syntax_uid,
        ),
        _Attr("InstanceNumber", Level.IMAGE, _Kind.INT, s.instances.c.instance_number),
        _Attr("NumberOfFrames", Level.IMAGE, _Kind.INT, s.instances.c.number_of_frames),
        _Attr("Rows", Level.IMAGE, _Kind.INT, s.instances.c.rows),
        _Attr("Columns", Level.IMAGE, _Kind.INT, s.instances.c.columns),
    )
}

#: Keywords of the attributes the engine matches on and returns from the index.
SUPPORTED_KEYWORDS: frozenset[str] = frozenset(_ATTRS)

_UNIQUE_KEY = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
_LEVEL_TABLE = {
    Level.PATIENT: s.patients,
    Level.STUDY: s.studies,
    Level.SERIES: s.series,
    Level.IMAGE: s.instances,
}
# The pairs that form one date-time range when either is a range (C.2.2.2.5.2).
_DATE_TIME_PAIRS = (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"))

# Never matching keys: they say how to answer, not what to find.
_QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)
_SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
_RETRIEVE_AE_TITLE = Tag(0x0008, 0x0054)
_INSTANCE_AVAILABILITY = Tag(0x0008, 0x0056)

_DATE_RE = re.compile(r"\d{8}")
# HH, HHMM, HHMMSS or HHMMSS.F to .FFFFFF; a second of 60 is a leap second.
_TIME_RE = re.compile(r"([01]\d|2[0-3])([0-5]\d(([0-5]\d|60)(\.\d{1,6})?)?)?")
_TIME_TOP = "~"  # sorts after digits and ".": an upper bound "12" then covers 12:59:59.9


# ---- the query ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A parsed hierarchical query: what to match and what to return.

    Attributes:
        level: the Query/Retrieve Level.
        model: the information model it was asked in.
        conditions: the matching keys used (universal matching keys are not listed).
        return_keys: (tag, VR) of every attribute of the identifier, in tag order, besides
            QueryRetrieveLevel and SpecificCharacterSet; each is present in every response.
        ignored: keywords (or tags, for unknown attributes) given a value that is not
            used for matching (unsupported here, or a return-only key).
        hospitals: restricts matches to patients of these hospitals; None for all.
    """

    level: Level
    model: Model
    conditions: tuple[Condition, ...] = ()
    return_keys: tuple[tuple[BaseTag, str], ...] = ()
    ignored: tuple[str, ...] = ()
    hospitals: frozenset[str] | None = field(default=None)

    def restricted_to(self, hospitals: Collection[str]) -> Query:
        """Returns this query limited to patients of ``hospitals`` (access control)."""
        return replace(self, hospitals=frozenset(hospitals))

    def select(self, dialect: str) -> Select[Any]:
        """Returns the SELECT of the matching entities at the query level, one row each.

        The columns are labelled with the keywords of the return keys that the index holds,
        plus the unique keys of the query level and the levels above it.

        Args:
            dialect: ``"sqlite"`` or ``"postgresql"`` (case-sensitive wildcard matching
                needs GLOB on SQLite, whose LIKE ignores ASCII case).
        """
        keywords = dict.fromkeys(self._unique_keywords())
        for tag, _ in self.return_keys:
            keyword = keyword_for_tag(tag)
            if keyword in _ATTRS and self._supported(_ATTRS[keyword]):
                keywords[keyword] = None
        columns = [_output_column(_ATTRS[k]).label(k) for k in keywords]
        stmt = select(*columns).select_from(_from_clause(self.level))
        return stmt.where(*self._where(dialect))

    def instances_select(self, dialect: str) -> Select[Any]:
        """Returns the SELECT of the instances below the matching entities.

        Columns: sop_uid, sop_class_uid, transfer_syntax_uid, object_key, study_uid,
        series_uid (see :class:`InstanceRef`).

        Args:
            dialect: as for :meth:`select`.
        """
        stmt = select(
            s.instances.c.sop_uid,
            s.instances.c.sop_class_uid,
            s.instances.c.transfer_syntax_uid,
            s.instances.c.object_key,
            s.studies.c.study_uid,
            s.series.c.series_uid,
        ).select_from(_from_clause(Level.IMAGE))
        return stmt.where(*self._where(dialect))

    def response(self, row: Any) -> Dataset:
        """Returns the response identifier of one row of :meth:`select`.

        Every return key is present: filled from the index where it holds the attribute,
        empty otherwise.
        """
        values = row._mapping
        ds = Dataset()
        ds.add(_new(_SPECIFIC_CHARACTER_SET, "CS", UTF8))
        ds.add(_new(_QUERY_RETRIEVE_LEVEL, "CS", self.level.value))
        for tag, vr in self.return_keys:
            keyword = keyword_for_tag(tag)
            if keyword in values:
                ds.add(_element(tag, vr, keyword, values[keyword]))
            elif tag == _INSTANCE_AVAILABILITY:
                ds.add(_new(tag, vr, "ONLINE"))  # every indexed object is stored
            else:
                ds.add(_new(tag, vr, DicomSequence() if vr == "SQ" else None))
        for keyword in self._unique_keywords():
            if keyword not in ds:
                unique = Tag(keyword)
                ds.add(_element(unique, dictionary_VR(unique), keyword, values[keyword]))
        return ds

    # ---- helpers ----------------------------------------------------------------------------

    def _supported(self, attr: _Attr) -> bool:
        return attr.level.depth <= self.level.depth

    def _unique_keywords(self) -> list[str]:
        """Returns the unique keys of the query level and the levels above, in the model."""
        return [_UNIQUE_KEY[lv] for lv in self.model.levels if lv.depth <= self.level.depth]

    def _where(self, dialect: str) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        by_keyword = {c.keyword: c for c in self.conditions}
        paired: set[str] = set()
        for date_kw, time_kw in _DATE_TIME_PAIRS:
            date, time = by_keyword.get(date_kw), by_keyword.get(time_kw)
            if date is None or time is None:
                continue
            if MatchKind.RANGE not in (date.kind, time.kind):
                continue
            clauses.append(_date_time_range(_ATTRS[date_kw], date, _ATTRS[time_kw], time))
            paired |= {date_kw, time_kw}
        for cond in self.conditions:
            if cond.keyword not in paired:
                clauses.append(_condition_clause(_ATTRS[cond.keyword], cond, dialect))
        if self.hospitals is not None:
            clauses.append(s.patients.c.hospital.in_(sorted(self.hospitals)))
        return clauses


@dataclass(frozen=True)
class InstanceRef:
    """One instance to retrieve: what a C-MOVE or C-GET sub-operation needs."""

    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    study_uid: str
    series_uid: str


# ---- parsing --------------------------------------------------------------------------------


def parse_identifier(ds: Dataset, model: Model, *, retrieve: bool = False) -> Query:
    """Reads a C-FIND (or, with ``retrieve``, C-MOVE/C-GET) request identifier.

    Args:
        ds: the identifier as decoded by pydicom (its Specific Character Set applied).
        model: the information model of the SOP Class it came with.
        retrieve: a retrieve identifier: only the unique keys are matching keys (PS3.4
            C.4.2.2.1), and the unique key of the query level must have a value.

    Returns:
        The query.

    Raises:
        QueryError: 0xA900 for a missing or unknown QueryRetrieveLevel, a level the model
            lacks, a unique key above the level missing or not a single value (or, for a
            retrieve, missing at the level); 0xC000 for a malformed value (date or time
            range, number), a wildcard in a UID, date, time or number, sequence matching.
    """
    level = _parse_level(ds, model)
    above = [lv for lv in model.levels if lv.depth < level.depth]
    unique_above = {_UNIQUE_KEY[lv] for lv in above}
    model_unique = {_UNIQUE_KEY[lv] for lv in model.levels}  # PatientID only in Patient Root
    return_keys: list[tuple[BaseTag, str]] = []
    conditions: list[Condition] = []
    ignored: list[str] = []
    for tag in ds.keys():
        elem = _element_of(ds, tag)
        if tag in (_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET) or tag.group in (0, 2):
            continue
        # An ambiguous VR ("US or SS") cannot be encoded; an empty value fits either.
        return_keys.append((tag, elem.VR.split(" or ")[0]))
        if tag in (_RETRIEVE_AE_TITLE, _INSTANCE_AVAILABILITY):
            continue  # answered by the caller or constant: never matched
        name = elem.keyword or str(tag)
        values = _values(elem)
        if not values:
            continue  # universal matching (or an empty sequence)
        attr = _ATTRS.get(elem.keyword)
        if (
            attr is None
            or attr.level.depth > level.depth
            or attr.kind is _Kind.RETURN_ONLY
            or (retrieve and elem.keyword not in model_unique)
        ):
            ignored.append(name)
            continue
        cond = _parse_condition(attr, values)
        if cond is None:
            continue  # "*" alone: universal
        if attr.keyword in unique_above and cond.kind is not MatchKind.SINGLE:
            raise QueryError(
                f"{attr.keyword} must be a single value above the {level.value} level",
                IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            )
        conditions.append(cond)
    given = {c.keyword for c in conditions}
    for keyword in sorted(unique_above - given):
        raise QueryError(
            f"{keyword} must be given (a single value) in a hierarchical {level.value} level "
            f"query of the {model.value} model",
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        )
    if retrieve and _UNIQUE_KEY[level] not in given:
        raise QueryError(
            f"a retrieve at the {level.value} level needs {_UNIQUE_KEY[level]}",
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        )
    return Query(
        level=level,
        model=model,
        conditions=tuple(conditions),
        return_keys=tuple(return_keys),
        ignored=tuple(ignored),
    )


def identifier(level: Level | str, **keys: Any) -> Dataset:
    """Returns a request identifier: ``identifier("STUDY", PatientName="Doe*",
    StudyDate="20240101-20240131", ModalitiesInStudy="")`` (the shape that
    ``ls --patient-name`` and the tests build).

    Raises:
        AttributeError: a keyword pydicom does not know.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = Level(level).value
    for keyword, value in keys.items():
        if tag_for_keyword(keyword) is None:
            raise AttributeError(f"unknown DICOM keyword {keyword!r}")
        setattr(ds, keyword, value)
    return ds


def _parse_level(ds: Dataset, model: Model) -> Level:
    raw = str(ds.get("QueryRetrieveLevel", "") or "").strip()
    try:
        level = Level(raw)
    except ValueError:
        raise QueryError(
            f"QueryRetrieveLevel {raw!r} is not PATIENT, STUDY, SERIES or IMAGE",
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        ) from None
    if level not in model.levels:
        raise QueryError(
            f"the {model.value} model has no {level.value} level",
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        )
    return level


def _element_of(ds: Dataset, tag: BaseTag) -> DataElement:
    """Returns the element, converted from its raw bytes.

    Raises:
        QueryError: the value cannot be read (0xC000).
    """
    try:
        return ds[tag]
    except (ValueError, TypeError, LookupError) as exc:  # UnicodeDecodeError is a ValueError
        raise QueryError(f"the value of {tag} cannot be read: {type(exc).__name__}") from exc


def _values(elem: DataElement) -> list[str]:
    """Returns the element's non-empty values as text ([] for universal matching).

    Raises:
        QueryError: a sequence with a value to match (0xC000).
    """
    if elem.VR == "SQ":
        if any(_item_has_value(item) for item in elem.value or ()):
            raise QueryError(
                f"sequence matching ({elem.keyword or elem.tag}) is not supported",
                UNABLE_TO_PROCESS,
            )
        return []
    value = elem.value
    if value is None:
        return []
    raw = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if isinstance(value, bytes):
        return []  # binary VRs cannot be matched on
    out = [str(v).strip() for v in raw if v is not None]
    # One empty value among several carries nothing; all empty is universal.
    return [v for v in out if v]


def _item_has_value(item: Dataset) -> bool:
    for elem in item:
        if elem.VR == "SQ":
            if any(_item_has_value(sub) for sub in elem.value or ()):
                return True
        elif elem.value not in (None, "", b""):
            return True
    return False


def _parse_condition(attr: _Attr, values: list[str]) -> Condition | None:
    """Returns the condition of a supported key with values, None if it is universal.

    Raises:
        QueryError: the values do not suit the attribute's VR (0xC000).
    """
    kw, kind = attr.keyword, attr.kind
    wild = [v for v in values if "*" in v or "?" in v]
    if all(set(v) == {"*"} for v in values):
        # "*" alone matches everything, empty values included (C.2.2.2.4); accepted for
        # every VR, as SCUs send it for UIDs and dates too.
        return None
    if kind in (_Kind.TEXT, _Kind.PN, _Kind.MODALITIES):
        if len(values) > 1 or kind is _Kind.MODALITIES:
            return Condition(kw, MatchKind.LIST, tuple(values))
        return Condition(kw, MatchKind.WILDCARD if wild else MatchKind.SINGLE, (values[0],))
    if wild:
        raise QueryError(f"{kw}: wildcards are not allowed for this attribute")
    if kind is _Kind.UID:
        if len(values) > 1:
            return Condition(kw, MatchKind.LIST, tuple(dict.fromkeys(values)))
        return Condition(kw, MatchKind.SINGLE, (values[0],))
    if len(values) > 1:
        raise QueryError(f"{kw}: multiple values are not allowed for this attribute")
    value = values[0]
    if kind is _Kind.INT:
        try:
            int(value)
        except ValueError:
            raise QueryError(f"{kw}: not an integer") from None
        return Condition(kw, MatchKind.SINGLE, (str(int(value)),))
    pattern = _DATE_RE if kind is _Kind.DATE else _TIME_RE
    if "-" not in value:
        if not _valid(value, pattern, kind):
            raise QueryError(f"{kw}: not a valid {'date' if kind is _Kind.DATE else 'time'}")
        return Condition(kw, MatchKind.SINGLE, (value,))
    low, _, high = value.partition("-")
    low, high = low.strip(), high.strip()
    if (not low and not high) or any(b and not _valid(b, pattern, kind) for b in (low, high)):
        raise QueryError(f"{kw}: not a valid range")
    return Condition(kw, MatchKind.RANGE, (low, high))


def _valid(value: str, pattern: re.Pattern[str], kind: _Kind) -> bool:
    if not pattern.fullmatch(value):
        return False
    if kind is _Kind.DATE:
        try:
            datetime.strptime(value, "%Y%m%d")
        except ValueError:
            return False
    return True


# ---- SQL ------------------------------------------------------------------------------------


def _from_clause(level: Level) -> FromClause:
    """Returns the level's table joined to its ancestors (many-to-one: no duplicates)."""
    joined: FromClause = s.patients
    if level.depth >= 1:
        joined = s.studies.join(s.patients, s.studies.c.patient_pk == s.patients.c.pk)
    if level.depth >= 2:
        joined = s.series.join(joined, s.series.c.study_pk == s.studies.c.pk)
    if level.depth >= 3:
        joined = s.instances.join(joined, s.instances.c.series_pk == s.series.c.pk)
    return joined


def _output_column(attr: _Attr) -> ColumnElement[Any]:
    if attr.column is not None:
        return attr.column
    # Patient-level counts: aggregates of the patient's studies. An alias, so that at the
    # study level and below the subquery does not correlate to the outer studies row.
    studies = s.studies.alias("patient_studies")
    if attr.keyword == "NumberOfPatientRelatedStudies":
        value: ColumnElement[Any] = func.count()
    elif attr.keyword == "NumberOfPatientRelatedSeries":
        value = func.coalesce(func.sum(studies.c.number_of_series), 0)
    else:
        value = func.coalesce(func.sum(studies.c.number_of_instances), 0)
    return (
        # Cast: PostgreSQL's SUM of integers is NUMERIC (a Decimal in Python).
        select(cast(value, BigInteger))
        .where(studies.c.patient_pk == s.patients.c.pk)
        .correlate(s.patients)
        .scalar_subquery()
    )


def _condition_clause(attr: _Attr, cond: Condition, dialect: str) -> ColumnElement[bool]:
    column = attr.column
    assert column is not None  # RETURN_ONLY attributes never become conditions
    if attr.kind is _Kind.MODALITIES:
        # Any series of the study with one of the modalities: exact, and it can use the
        # series' study_pk index, where a LIKE on the joined string could not.
        series = s.series.alias("study_series")
        any_of = or_(*(_text_match(series.c.modality, v, False, dialect) for v in cond.values))
        return exists().where(series.c.study_pk == s.studies.c.pk, any_of)
    if cond.kind is MatchKind.RANGE:
        low, high = cond.values
        return _range(column, low, high, attr.kind is _Kind.TIME)
    if attr.kind in (_Kind.TEXT, _Kind.PN):
        pn = attr.kind is _Kind.PN
        return or_(*(_text_match(column, v, pn, dialect) for v in cond.values))
    if attr.kind is _Kind.INT:
        return column == int(cond.values[0])
    if cond.kind is MatchKind.LIST:
        return column.in_(cond.values)
    return column == cond.values[0]


def _text_match(
    column: ColumnElement[Any], value: str, pn: bool, dialect: str
) -> ColumnElement[bool]:
    """Single value or wildcard matching of one text value."""
    wildcard = "*" in value or "?" in value
    if set(value) == {"*"}:
        return column.is_not(None) | column.is_(None)  # universal within a list
    if pn:
        # Case-insensitive: lower() on both sides, so that both fold the same way.
        if not wildcard:
            name = value.rstrip("^")
            return func.lower(func.rtrim(column, "^")) == func.lower(literal(name))
        return func.lower(column).like(func.lower(literal(_like(value))), escape=_ESCAPE)
    if not wildcard:
        return column == value
    if dialect == "sqlite":
        # SQLite's LIKE ignores ASCII case; GLOB is case-sensitive and can use the index.
        return column.op("GLOB", is_comparison=True)(_glob(value))
    return column.like(_like(value), escape=_ESCAPE)


def _like(value: str) -> str:
    """Returns the LIKE pattern of a DICOM wildcard value; % _ ! are escaped by !."""
    out = []
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_" + _ESCAPE:
            out.append(_ESCAPE + ch)
        else:
            out.append(ch)
    return "".join(out)


def _glob(value: str) -> str:
    """Returns the SQLite GLOB pattern of a DICOM wildcard value.

    GLOB's wildcards are DICOM's own; only ``[`` (a character class) needs quoting, as
    ``[[]``. ``*`` and ``?`` cannot be literal in DICOM wildcard matching.
    """
    return value.replace("[", "[[]")


def _range(column: ColumnElement[Any], low: str, high: str, time: bool) -> ColumnElement[bool]:
    """Inclusive range of DA or TM strings; a partial TM upper bound covers its unit."""
    if time and high:
        high += _TIME_TOP
    if low and high:
        return column.between(low, high)
    return column >= low if low else column <= high


def _date_time_range(
    date_attr: _Attr, date: Condition, time_attr: _Attr, time: Condition
) -> ColumnElement[bool]:
    """One date-time range from a date key and a time key (C.2.2.2.5.2).

    A single value stands for the range from itself to itself. The time of the lower bound
    applies on the lower date only, the time of the upper bound on the upper date only.
    """
    d, t = date_attr.column, time_attr.column
    assert d is not None and t is not None
    d_low, d_high = date.values * 2 if date.kind is MatchKind.SINGLE else date.values
    t_low, t_high = time.values * 2 if time.kind is MatchKind.SINGLE else time.values
    clauses: list[ColumnElement[bool]] = []
    if d_low:
        clauses.append(or_(d > d_low, and_(d == d_low, t >= t_low)) if t_low else d >= d_low)
    if d_high:
        top = t_high + _TIME_TOP if t_high else ""
        clauses.append(or_(d < d_high, and_(d == d_high, t <= top)) if top else d <= d_high)
    # A date range or single value always has a bound, so clauses is never empty.
    return and_(*clauses)


def _element(tag: BaseTag, vr: str, keyword: str, value: Any) -> DataElement:
    """Returns a response element of a value read from the index (None: empty)."""
    if keyword == "ModalitiesInStudy" and value:
        return _new(tag, vr, value.split("\\"))
    return _new(tag, vr, value)


def _new(tag: BaseTag, vr: str, value: Any) -> DataElement:
    # Not validated again: the values come from the index, as received (validation was
    # half the time of building a response).
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


# ---- running --------------------------------------------------------------------------------


class _HasEngine(Protocol):
    @property
    def engine(self) -> Engine: ...


Source = Engine | Connection | _HasEngine


def run(source: Source, query: Query) -> Iterator[Dataset]:
    """Yields one response identifier per matching entity, streamed from the database.

    Args:
        source: an SQLAlchemy Engine (a connection of its own is held until the iterator is
            exhausted or closed), a Connection (used as is, inside its transaction), or a
            :class:`~node.index.catalog.Catalog`.
        query: from :func:`parse_identifier`.

    Returns:
        An iterator of datasets (see :meth:`Query.response`), in no particular order.

    Raises:
        CatalogError: the database failed (raised from the iteration).
    """
    for row in _stream(source, query.select, f"querying at the {query.level.value} level"):
        yield query.response(row)


def instances_for(source: Source, query: Query) -> Iterator[InstanceRef]:
    """Yields the instances below the entities that ``query`` matches (for C-MOVE/C-GET).

    Args:
        source: as for :func:`run`.
        query: usually from ``parse_identifier(ds, model, retrieve=True)``.

    Returns:
        An iterator of :class:`InstanceRef`, in no particular order.

    Raises:
        CatalogError: the database failed (raised from the iteration).
    """
    for row in _stream(source, query.instances_select, "listing instances to retrieve"):
        yield InstanceRef(**row._mapping)


def count_instances(source: Source, query: Query) -> int:
    """Returns how many instances :func:`instances_for` would yield (the number of
    sub-operations a C-MOVE or C-GET announces).

    Raises:
        CatalogError: the database failed.
    """

    def build(dialect: str) -> Select[Any]:
        inner = query.instances_select(dialect).subquery()
        return select(func.count()).select_from(inner)

    rows = list(_stream(source, build, "counting instances to retrieve"))
    return int(rows[0][0])


def _engine_of(source: Source) -> Engine | Connection:
    if isinstance(source, Engine | Connection):
        return source
    return source.engine  # a Catalog


def _stream(
    source: Source, build: Callable[[str], Select[Any]], what: str
) -> Iterator[Any]:
    """Yields the rows of ``build(dialect)``, YIELD_PER at a time (a server-side cursor on
    PostgreSQL).

    Raises:
        CatalogError: the database failed.
    """
    bind = _engine_of(source)
    stmt = build(bind.dialect.name).execution_options(yield_per=YIELD_PER)
    try:
        if isinstance(bind, Connection):
            yield from bind.execute(stmt)
            return
        with bind.connect() as conn:
            yield from conn.execute(stmt)
    except SQLAlchemyError as exc:
        raise CatalogError(f"{what} failed: {_describe_db_error(exc)}") from exc


__all__ = [
    "IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS",
    "SUPPORTED_KEYWORDS",
    "UNABLE_TO_PROCESS",
    "Condition",
    "InstanceRef",
    "Level",
    "MatchKind",
    "Model",
    "Query",
    "QueryError",
    "count_instances",
    "identifier",
    "instances_for",
    "parse_identifier",
    "run",
]
