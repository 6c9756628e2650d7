"""Q/R request identifiers (pydicom Datasets) to core queries, and rows back to responses.

The DIMSE side of the query engine (``node.index.query``): :func:`parse_identifier` reads
an identifier into plain ``(keyword or tag, values)`` pairs for :func:`~node.index.query.build`
and remembers every return key; :meth:`Identifier.response` turns one result row into the
response identifier. Responses carry SpecificCharacterSet ``ISO_IR 192`` (values are
returned as Unicode text), QueryRetrieveLevel, every return key asked for (empty when the
index does not hold it), the unique keys of the query level and above, InstanceAvailability
``ONLINE`` when asked for, and RetrieveAETitle empty when asked for (the handler fills it).
Sequences may be requested as return keys (returned empty); sequence *matching* is refused.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag

from node.index.query import (
    Condition,
    Level,
    Model,
    Query,
    QueryLevelError,
    QueryValueError,
    build,
    run,
)
from node.index.query.execute import Source

UTF8 = "ISO_IR 192"

# Never matching keys: they say how to answer, not what to find.
_QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)
_SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
_RETRIEVE_AE_TITLE = Tag(0x0008, 0x0054)
_INSTANCE_AVAILABILITY = Tag(0x0008, 0x0056)

_MODEL_OF_SOP_CLASS = {
    "1.2.840.10008.5.1.4.1.2.1.1": Model.PATIENT_ROOT,  # FIND
    "1.2.840.10008.5.1.4.1.2.1.2": Model.PATIENT_ROOT,  # MOVE
    "1.2.840.10008.5.1.4.1.2.1.3": Model.PATIENT_ROOT,  # GET
    "1.2.840.10008.5.1.4.1.2.2.1": Model.STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": Model.STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": Model.STUDY_ROOT,
}


def model_for_sop_class(sop_class_uid: str) -> Model:
    """Returns the model of a FIND, MOVE or GET SOP Class UID.

    Raises:
        KeyError: not a Patient Root or Study Root Q/R SOP Class.
    """
    return _MODEL_OF_SOP_CLASS[sop_class_uid]


@dataclass(frozen=True)
class Identifier:
    """A parsed request identifier: the core query and the return keys (tag, VR) to answer
    with, in tag order (QueryRetrieveLevel and SpecificCharacterSet aside)."""

    query: Query
    return_keys: tuple[tuple[BaseTag, str], ...] = ()

    @property
    def level(self) -> Level:
        return self.query.level

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return self.query.conditions

    @property
    def ignored(self) -> tuple[str, ...]:
        return self.query.ignored

    def restricted_to(self, hospitals: Collection[str]) -> Identifier:
        """Returns this identifier limited to patients of ``hospitals`` (access control)."""
        return replace(self, query=self.query.restricted_to(hospitals))

    def response(self, values: Mapping[str, Any]) -> Dataset:
        """Returns the response identifier of one result row of the query."""
        ds = Dataset()
        ds.add(_new(_SPECIFIC_CHARACTER_SET, "CS", UTF8))
        ds.add(_new(_QUERY_RETRIEVE_LEVEL, "CS", self.query.level.value))
        for tag, vr in self.return_keys:
            keyword = keyword_for_tag(tag)
            if keyword in values:
                ds.add(_element(tag, vr, keyword, values[keyword]))
            elif tag == _INSTANCE_AVAILABILITY:
                ds.add(_new(tag, vr, "ONLINE"))  # every indexed object is stored
            else:
                ds.add(_new(tag, vr, DicomSequence() if vr == "SQ" else None))
        for keyword in self.query.unique_keywords():
            if keyword not in ds:
                unique = Tag(keyword)
                ds.add(_element(unique, dictionary_VR(unique), keyword, values[keyword]))
        return ds


def find(source: Source, ident: Identifier) -> Iterator[Dataset]:
    """Yields one response identifier per match (raises CatalogError from the iteration)."""
    for row in run(source, ident.query):
        yield ident.response(row)


def parse_identifier(ds: Dataset, model: Model, *, retrieve: bool = False) -> Identifier:
    """Reads a C-FIND (or, with ``retrieve``, C-MOVE/C-GET) request identifier.

    Raises:
        QueryLevelError: a missing or unknown QueryRetrieveLevel, a level the model lacks, a
            unique key above the level missing or not a single value (or, for a retrieve,
            missing at the level): the handler answers 0xA900.
        QueryValueError: a malformed value, a wildcard where none is allowed, sequence
            matching, an unreadable element: 0xC000.
    """
    level = _parse_level(ds)
    return_keys: list[tuple[BaseTag, str]] = []
    keys: list[tuple[str, list[str]]] = []
    for tag in ds.keys():
        elem = _element_of(ds, tag)
        if tag in (_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET) or tag.group in (0, 2):
            continue
        # An ambiguous VR ("US or SS") cannot be encoded; an empty value fits either.
        return_keys.append((tag, elem.VR.split(" or ")[0]))
        if tag in (_RETRIEVE_AE_TITLE, _INSTANCE_AVAILABILITY):
            continue  # answered by the handler or constant: never matched
        keys.append((elem.keyword or f"{int(tag):08X}", _values(elem)))
    returns = [keyword_for_tag(tag) for tag, _ in return_keys]
    query = build(level, keys, model=model, retrieve=retrieve, returns=returns)
    return Identifier(query, tuple(return_keys))


def identifier(level: Level | str, **keys: Any) -> Dataset:
    """Returns a request identifier: ``identifier("STUDY", PatientName="Doe*",
    StudyDate="20240101-20240131", ModalitiesInStudy="")`` (the shape tests and benchmarks
    build).

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


def _parse_level(ds: Dataset) -> Level:
    raw = str(ds.get("QueryRetrieveLevel", "") or "").strip()
    try:
        return Level(raw)
    except ValueError:
        raise QueryLevelError(
            f"QueryRetrieveLevel {raw!r} is not PATIENT, STUDY, SERIES or IMAGE") from None


def _element_of(ds: Dataset, tag: BaseTag) -> DataElement:
    """Returns the element, converted from its raw bytes.

    Raises:
        QueryValueError: the value cannot be read.
    """
    try:
        return ds[tag]
    except (ValueError, TypeError, LookupError) as exc:  # UnicodeDecodeError is a ValueError
        raise QueryValueError(f"the value of {tag} cannot be read: {type(exc).__name__}") from exc


def _values(elem: DataElement) -> list[str]:
    """Returns the element's non-empty values as text ([] for universal matching).

    Raises:
        QueryValueError: a sequence with a value to match.
    """
    if elem.VR == "SQ":
        if any(_item_has_value(item) for item in elem.value or ()):
            raise QueryValueError(f"sequence matching ({elem.keyword or elem.tag}) is not "
                                  "supported")
        return []
    value = elem.value
    if value is None or isinstance(value, bytes):
        return []  # binary VRs cannot be matched on
    raw = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
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


def _element(tag: BaseTag, vr: str, keyword: str, value: Any) -> DataElement:
    """Returns a response element of a value read from the index (None: empty)."""
    if keyword == "ModalitiesInStudy" and value:
        return _new(tag, vr, value.split("\\"))
    return _new(tag, vr, value)


def _new(tag: BaseTag, vr: str, value: Any) -> DataElement:
    # Not validated again: the values come from the index, as received (validation was
    # half the time of building a response).
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


__all__ = ["Identifier", "find", "identifier", "model_for_sop_class", "parse_identifier"]
