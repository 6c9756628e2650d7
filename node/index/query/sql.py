"""The SQL of a query: one SQLAlchemy Core SELECT over patients > studies > series >
instances, joined up from the query level (many-to-one joins: one row per match)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FromClause,
    Select,
    and_,
    cast,
    exists,
    func,
    literal,
    null,
    or_,
    select,
)

from node.index import schema as s
from node.index.attributes import BY_KEYWORD, HIDDEN, PSEUDONYM, Attribute, Level, Match
from node.index.query.model import Condition, MatchKind, Query

_ESCAPE = "!"  # LIKE escape character: never special in DICOM, unlike "\" (value delimiter)
_TIME_TOP = "~"  # sorts after digits and ".": an upper bound "12" then covers 12:59:59.9
# The pairs that form one date-time range when either is a range (C.2.2.2.5.2).
_DATE_TIME_PAIRS = (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"))
_TABLE = {Level.PATIENT: s.patients, Level.STUDY: s.studies, Level.SERIES: s.series,
          Level.IMAGE: s.instances}


def select_matches(query: Query, dialect: str) -> Select[Any]:
    """Returns the SELECT of the matching entities at the query level, one row each, its
    columns labelled with :meth:`Query.columns`.

    Args:
        dialect: ``"sqlite"`` or ``"postgresql"`` (case-sensitive wildcard matching needs
            GLOB on SQLite, whose LIKE ignores ASCII case).
    """
    columns = [_output_column(BY_KEYWORD[k], query.pseudonymous).label(k)
               for k in query.columns()]
    stmt = select(*columns).select_from(_from_clause(query.level))
    stmt = stmt.where(*_where(query, dialect))
    if query.limit is not None or query.offset:
        # A stable order, so that pages neither repeat nor skip matches.
        stmt = stmt.order_by(*(_column(BY_KEYWORD[k]) for k in query.unique_keywords()))
        stmt = stmt.offset(query.offset).limit(query.limit)
    return stmt


def select_instances(query: Query, dialect: str) -> Select[Any]:
    """Returns the SELECT of the instances below the matching entities.

    Columns: sop_uid, sop_class_uid, transfer_syntax_uid, object_key, study_uid,
    series_uid (see :class:`~node.index.query.execute.InstanceRef`).
    """
    stmt = select(
        s.instances.c.sop_uid,
        s.instances.c.sop_class_uid,
        s.instances.c.transfer_syntax_uid,
        s.instances.c.object_key,
        s.studies.c.study_uid,
        s.series.c.series_uid,
    ).select_from(_from_clause(Level.IMAGE))
    return stmt.where(*_where(query, dialect))


def _column(attr: Attribute) -> ColumnElement[Any]:
    return _TABLE[attr.level].c[attr.column]


def _where(query: Query, dialect: str) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    by_keyword = {c.keyword: c for c in query.conditions}
    paired: set[str] = set()
    for date_kw, time_kw in _DATE_TIME_PAIRS:
        date, time = by_keyword.get(date_kw), by_keyword.get(time_kw)
        if date is None or time is None or MatchKind.RANGE not in (date.kind, time.kind):
            continue
        clauses.append(_date_time_range(BY_KEYWORD[date_kw], date, BY_KEYWORD[time_kw], time))
        paired |= {date_kw, time_kw}
    for cond in query.conditions:
        if cond.keyword not in paired:
            clauses.append(_condition_clause(BY_KEYWORD[cond.keyword], cond, dialect,
                                             query.pseudonymous))
    if query.hospitals is not None:
        clauses.append(s.patients.c.hospital.in_(sorted(query.hospitals)))
    return clauses


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


def _output_column(attr: Attribute, pseudonymous: bool = False) -> ColumnElement[Any]:
    if pseudonymous and attr.identity == PSEUDONYM:
        return s.patients.c.patient_key
    if pseudonymous and attr.identity == HIDDEN:
        return null()
    if attr.column:
        return _column(attr)
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


def _condition_clause(attr: Attribute, cond: Condition, dialect: str,
                      pseudonymous: bool = False) -> ColumnElement[bool]:
    column = _column(attr)  # RETURN_ONLY attributes never become conditions
    if pseudonymous and attr.identity == PSEUDONYM:
        column = s.patients.c.patient_key
    if attr.match is Match.MODALITIES:
        # Any series of the study with one of the modalities: exact, and it can use the
        # series' study_pk index, where a LIKE on the joined string could not.
        series = s.series.alias("study_series")
        any_of = or_(*(_text_match(series.c.modality, v, False, dialect) for v in cond.values))
        return exists().where(series.c.study_pk == s.studies.c.pk, any_of)
    if cond.kind is MatchKind.RANGE:
        low, high = cond.values
        return _range(column, low, high, attr.match is Match.TIME)
    if attr.match in (Match.TEXT, Match.PN):
        pn = attr.match is Match.PN
        return or_(*(_text_match(column, v, pn, dialect) for v in cond.values))
    if attr.match is Match.INT:
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
    date_attr: Attribute, date: Condition, time_attr: Attribute, time: Condition
) -> ColumnElement[bool]:
    """One date-time range from a date key and a time key (C.2.2.2.5.2).

    A single value stands for the range from itself to itself. The time of the lower bound
    applies on the lower date only, the time of the upper bound on the upper date only.
    """
    d, t = _column(date_attr), _column(time_attr)
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
