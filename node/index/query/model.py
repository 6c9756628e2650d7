"""What a query is, and how plain ``(keyword or tag, values)`` pairs become one.

Choices where the standard leaves room, all deliberate:

* **Supported keys.** The attributes the index holds (:data:`SUPPORTED_KEYWORDS`, from
  ``node.index.attributes``) at the query level and the levels above it. Any other key
  (unknown, private, of a lower level, a count) is *not* used for matching (PS3.4 C.2.2.1:
  an SCP may ignore keys it does not support); it is listed in :attr:`Query.ignored` so that
  callers can log it.
* **Hierarchical or relational.** With a :class:`Model`, the query is hierarchical: the
  unique key of every level above the query level must be given, as one value. Without one
  (QIDO-RS) it is relational: any supported key of the query level or above may be given.
* **Case.** Single value and wildcard matching are case-sensitive, except for PN
  (PatientName, ReferringPhysicianName), matched case-insensitively, as C.2.2.2.1 allows and
  as most PACS do. Trailing ``^`` are not significant in single value PN matching.
* **Wildcards** ``*`` and ``?`` apply to text VRs, not to UIDs, dates, times or numbers
  (refused there). A value of only ``*`` is universal matching, accepted for every VR since
  SCUs send it for UIDs and dates too.
* **Multiple values.** A list of UIDs matches any of them (C.2.2.2.2). For other text keys,
  multiple values match an entity that matches *any* of them; ModalitiesInStudy ``CT\\MR``
  thus finds studies with a CT *or* an MR series, as most PACS do.
* **Ranges** for DA and TM: ``A-B``, ``-B``, ``A-``, inclusive; a partial time bound covers
  its whole hour or minute at the upper end. A date and a time of one entity, one of them a
  range, are one date-time range (C.2.2.2.5.2).
* **Computed keys** (Number of ... Related ..., ModalitiesInStudy) come from the counts the
  catalog keeps; the counts are return keys only.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from node.errors import NodeError
from node.index.attributes import (
    BY_KEYWORD,
    HIDDEN,
    UNIQUE_KEY,
    Attribute,
    Level,
    Match,
    lookup,
)

#: Keywords of the attributes the engine matches on and returns from the index.
SUPPORTED_KEYWORDS: frozenset[str] = frozenset(BY_KEYWORD)

_DATE_RE = re.compile(r"\d{8}")
# HH, HHMM, HHMMSS or HHMMSS.F to .FFFFFF; a second of 60 is a leap second.
_TIME_RE = re.compile(r"([01]\d|2[0-3])([0-5]\d(([0-5]\d|60)(\.\d{1,6})?)?)?")


class QueryError(NodeError):
    """A query the engine refuses; the message says why (no PHI: keywords only)."""


class QueryLevelError(QueryError):
    """The level is unknown or not in the model, or a unique key above the level (or, for a
    retrieve, at it) is missing or not a single value."""


class QueryValueError(QueryError):
    """A malformed value (date, time, range, number), a wildcard where none is allowed, or
    sequence matching."""


class Model(enum.Enum):
    """A hierarchical information model (PS3.4 C.3)."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"

    @property
    def levels(self) -> tuple[Level, ...]:
        """Returns the levels of this model, top first."""
        if self is Model.PATIENT_ROOT:
            return (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
        return (Level.STUDY, Level.SERIES, Level.IMAGE)


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


@dataclass(frozen=True)
class Query:
    """A parsed query: what to match and what to return.

    Attributes:
        level: the level of the entities it finds.
        model: the hierarchical model it was asked in; None for a relational query.
        conditions: the matching keys used (universal matching keys are not listed).
        returns: keywords of indexed attributes to return besides the unique keys.
        ignored: keys given a value that is not used for matching.
        hospitals: restricts matches to patients of these hospitals; None for all.
        offset / limit: a page of the matches, in the order of the unique keys (QIDO-RS);
            limit None for all of them, in no particular order.
        pseudonymous: for a caller who sees pseudonyms only: the patient's pseudonym is
            matched and returned as PatientID and PatientName, and the attributes marked
            ``HIDDEN`` in :mod:`node.index.attributes` are returned empty.
    """

    level: Level
    model: Model | None = None
    conditions: tuple[Condition, ...] = ()
    returns: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    hospitals: frozenset[str] | None = field(default=None)
    offset: int = 0
    limit: int | None = None
    pseudonymous: bool = False

    def page(self, offset: int, limit: int | None) -> Query:
        """Returns this query limited to ``limit`` matches after the first ``offset``."""
        return replace(self, offset=offset, limit=limit)

    def restricted_to(self, hospitals: Collection[str]) -> Query:
        """Returns this query limited to patients of ``hospitals`` (access control)."""
        return replace(self, hospitals=frozenset(hospitals))

    def pseudonymised(self) -> Query:
        """Returns this query as a pseudonymous caller may ask it.

        Raises:
            QueryValueError: it matches an attribute such a caller may not see (matching
                would reveal the value).
        """
        for cond in self.conditions:
            if BY_KEYWORD[cond.keyword].identity == HIDDEN:
                raise QueryValueError(f"{cond.keyword}: not available to a pseudonymous "
                                      "caller")
        return replace(self, pseudonymous=True)

    def unique_keywords(self) -> list[str]:
        """Returns the unique keys of the query level and the levels above it."""
        return unique_keywords(self.level, self.model)

    def columns(self) -> list[str]:
        """Returns the keywords every result row holds: unique keys, then supported
        ``returns``, each once."""
        keywords = dict.fromkeys(self.unique_keywords())
        for keyword in self.returns:
            attr = BY_KEYWORD.get(keyword)
            if attr is not None and attr.level.depth <= self.level.depth:
                keywords[keyword] = None
        return list(keywords)


def unique_keywords(level: Level, model: Model | None) -> list[str]:
    """Returns the unique keys of ``level`` and the levels above it in ``model`` (a relational
    query has the Study Root's, or PatientID alone at the patient level)."""
    levels = model.levels if model is not None else Model.STUDY_ROOT.levels
    if level is Level.PATIENT:
        return [UNIQUE_KEY[Level.PATIENT]]
    return [UNIQUE_KEY[lv] for lv in levels if lv.depth <= level.depth]


def build(level: Level, keys: Iterable[tuple[str, Sequence[str]]], *,
          model: Model | None = None, retrieve: bool = False,
          returns: Iterable[str] = ()) -> Query:
    """Returns the query of ``keys`` at ``level``.

    Args:
        level: the query level.
        keys: ``(keyword or 8-digit hex tag, values)`` pairs; no values (or only empty
            ones) is universal matching.
        model: a hierarchical model, or None for a relational query.
        retrieve: a retrieve (C-MOVE/C-GET): only the unique keys match (C.4.2.2.1), and the
            unique key of the level must have a value.
        returns: keywords of attributes to return.

    Raises:
        QueryLevelError: the level is not in the model, a unique key above the level is
            missing or not a single value (hierarchical only), or a retrieve lacks the
            level's unique key.
        QueryValueError: a value does not suit its attribute.
    """
    if model is not None and level not in model.levels:
        raise QueryLevelError(f"the {model.value} model has no {level.value} level")
    conditions: list[Condition] = []
    ignored: list[str] = []
    model_unique = {UNIQUE_KEY[lv] for lv in (model or Model.PATIENT_ROOT).levels}
    for key, raw in keys:
        values = [v.strip() for v in raw if v is not None and v.strip()]
        if not values:
            continue  # universal matching
        attr = lookup(key)
        if (attr is None or attr.level.depth > level.depth or attr.match is Match.RETURN_ONLY
                or (retrieve and attr.keyword not in model_unique)):
            ignored.append(attr.keyword if attr else key)
            continue
        cond = parse_condition(attr, values)
        if cond is not None:
            conditions.append(cond)
    query = Query(level=level, model=model, conditions=tuple(conditions),
                  returns=tuple(dict.fromkeys(returns)), ignored=tuple(ignored))
    if model is not None:
        _check_hierarchy(query, model)
    if retrieve:
        _check_retrieve_keys(query)
    if retrieve and UNIQUE_KEY[level] not in {c.keyword for c in conditions}:
        raise QueryLevelError(f"a retrieve at the {level.value} level needs "
                              f"{UNIQUE_KEY[level]}")
    return query


def _check_retrieve_keys(query: Query) -> None:
    """PS3.4 C.4.2.2.1: a retrieve's unique keys are single values, or lists of UIDs; a
    wildcard (``PatientID=*``) would move what nobody named."""
    for cond in query.conditions:
        uid = BY_KEYWORD[cond.keyword].match is Match.UID
        if cond.kind is MatchKind.SINGLE or (uid and cond.kind is MatchKind.LIST):
            continue
        raise QueryLevelError(f"{cond.keyword}: a retrieve takes a single value"
                              + (" or a list of UIDs" if uid else "") + ", not a wildcard,"
                              " range or list")


def _check_hierarchy(query: Query, model: Model) -> None:
    """PS3.4 C.4.1.2.1: one value for the unique key of every level above the query level."""
    given = {c.keyword: c for c in query.conditions}
    for lv in model.levels:
        if lv.depth >= query.level.depth:
            break
        keyword = UNIQUE_KEY[lv]
        cond = given.get(keyword)
        if cond is None:
            raise QueryLevelError(
                f"{keyword} must be given (a single value) in a hierarchical "
                f"{query.level.value} level query of the {model.value} model")
        if cond.kind is not MatchKind.SINGLE:
            raise QueryLevelError(
                f"{keyword} must be a single value above the {query.level.value} level")


def parse_condition(attr: Attribute, values: list[str]) -> Condition | None:
    """Returns the condition of a supported key with values, None if it is universal.

    Raises:
        QueryValueError: the values do not suit the attribute's VR.
    """
    kw, kind = attr.keyword, attr.match
    wild = [v for v in values if "*" in v or "?" in v]
    if all(set(v) == {"*"} for v in values):
        return None  # "*" alone matches everything, empty values included (C.2.2.2.4)
    if kind in (Match.TEXT, Match.PN, Match.MODALITIES):
        if len(values) > 1 or kind is Match.MODALITIES:
            return Condition(kw, MatchKind.LIST, tuple(values))
        return Condition(kw, MatchKind.WILDCARD if wild else MatchKind.SINGLE, (values[0],))
    if wild:
        raise QueryValueError(f"{kw}: wildcards are not allowed for this attribute")
    if kind is Match.UID:
        if len(values) > 1:
            return Condition(kw, MatchKind.LIST, tuple(dict.fromkeys(values)))
        return Condition(kw, MatchKind.SINGLE, (values[0],))
    if len(values) > 1:
        raise QueryValueError(f"{kw}: multiple values are not allowed for this attribute")
    value = values[0]
    if kind is Match.INT:
        try:
            return Condition(kw, MatchKind.SINGLE, (str(int(value)),))
        except ValueError:
            raise QueryValueError(f"{kw}: not an integer") from None
    pattern = _DATE_RE if kind is Match.DATE else _TIME_RE
    if "-" not in value:
        if not _valid(value, pattern, kind):
            raise QueryValueError(f"{kw}: not a valid {'date' if kind is Match.DATE else 'time'}")
        return Condition(kw, MatchKind.SINGLE, (value,))
    low, _, high = value.partition("-")
    low, high = low.strip(), high.strip()
    if (not low and not high) or any(b and not _valid(b, pattern, kind) for b in (low, high)):
        raise QueryValueError(f"{kw}: not a valid range")
    return Condition(kw, MatchKind.RANGE, (low, high))


def _valid(value: str, pattern: re.Pattern[str], kind: Match) -> bool:
    if not pattern.fullmatch(value):
        return False
    if kind is Match.DATE:
        try:
            datetime.strptime(value, "%Y%m%d")
        except ValueError:
            return False
    return True
