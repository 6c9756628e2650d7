"""The hierarchy for people browsing it (the AI page): hospitals, patients, studies,
series and instances with their counts and processing states, scoped to hospitals.

Every function takes ``hospitals`` (None: all) and returns plain dicts; an entity outside
them is not found (an empty list or None), exactly like one that does not exist.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, Select, case, func, select

from node.index import schema as s
from node.index.transactions import Transactions

P, ST, SE, IN = s.patients, s.studies, s.series, s.instances


def _scoped(stmt: Select[Any], hospitals: Collection[str] | None) -> Select[Any]:
    return stmt if hospitals is None else stmt.where(P.c.hospital.in_(sorted(hospitals)))


def _rows(index: Transactions, what: str, stmt: Select[Any]) -> list[dict[str, Any]]:
    def read(conn: Connection) -> list[dict[str, Any]]:
        return [dict(row._mapping) for row in conn.execute(stmt)]
    return index.reading(what, read)


def hospitals(index: Transactions, scope: Collection[str] | None) -> list[dict[str, Any]]:
    stmt = (select(P.c.hospital.label("hospital"),
                   func.count(func.distinct(P.c.pk)).label("patients"),
                   func.count(ST.c.pk).label("studies"),
                   func.coalesce(func.sum(ST.c.number_of_instances), 0).label("instances"))
            .select_from(P.outerjoin(ST, ST.c.patient_pk == P.c.pk))
            .group_by(P.c.hospital).order_by(P.c.hospital))
    return _rows(index, "listing hospitals", _scoped(stmt, scope))


def patients(index: Transactions, scope: Collection[str] | None,
             hospital: str) -> list[dict[str, Any]]:
    stmt = (select(P.c.patient_key, P.c.patient_id, P.c.patient_name,
                   func.count(ST.c.pk).label("studies"),
                   func.coalesce(func.sum(ST.c.number_of_instances), 0).label("instances"))
            .select_from(P.outerjoin(ST, ST.c.patient_pk == P.c.pk))
            .where(P.c.hospital == hospital)
            .group_by(P.c.pk, P.c.patient_key, P.c.patient_id, P.c.patient_name)
            .order_by(P.c.patient_key))
    return _rows(index, "listing patients", _scoped(stmt, scope))


def studies(index: Transactions, scope: Collection[str] | None, hospital: str,
            patient_key: str) -> list[dict[str, Any]]:
    stmt = (select(ST.c.study_uid, ST.c.study_date, ST.c.description,
                   ST.c.modalities_in_study, ST.c.number_of_series, ST.c.number_of_instances)
            .select_from(ST.join(P, ST.c.patient_pk == P.c.pk))
            .where(P.c.hospital == hospital, P.c.patient_key == patient_key)
            .order_by(ST.c.study_date.nulls_last(), ST.c.study_uid))
    return _rows(index, "listing studies", _scoped(stmt, scope))


def series(index: Transactions, scope: Collection[str] | None,
           study_uid: str) -> list[dict[str, Any]]:
    state_counts = (select(IN.c.series_pk.label("series_pk"),
                           func.count().label("images"),
                           func.sum(case((IN.c.state == "processed", 1), else_=0))
                           .label("processed"),
                           func.sum(case((IN.c.state == "queued", 1), else_=0)).label("queued"),
                           func.sum(case((IN.c.blank.is_(True), 1), else_=0)).label("blank"))
                    .group_by(IN.c.series_pk).subquery())
    stmt = (select(SE.c.series_uid, SE.c.modality, SE.c.series_number, SE.c.description,
                   SE.c.number_of_instances, state_counts.c.processed, state_counts.c.queued,
                   state_counts.c.blank, ST.c.study_uid, P.c.hospital)
            .select_from(SE.join(ST, SE.c.study_pk == ST.c.pk)
                         .join(P, ST.c.patient_pk == P.c.pk)
                         .outerjoin(state_counts, state_counts.c.series_pk == SE.c.pk))
            .where(ST.c.study_uid == study_uid)
            .order_by(SE.c.series_number.nulls_last(), SE.c.series_uid))
    return _rows(index, "listing series", _scoped(stmt, scope))


def instances(index: Transactions, scope: Collection[str] | None,
              series_uid: str) -> list[dict[str, Any]]:
    stmt = (select(IN.c.sop_uid, IN.c.sop_class_uid, IN.c.instance_number, IN.c.state, IN.c.blank,
                   IN.c.rows, IN.c.columns, IN.c.number_of_frames, IN.c.object_key,
                   SE.c.series_uid, ST.c.study_uid)
            .select_from(IN.join(SE, IN.c.series_pk == SE.c.pk).join(ST, SE.c.study_pk == ST.c.pk)
                         .join(P, ST.c.patient_pk == P.c.pk))
            .where(SE.c.series_uid == series_uid)
            .order_by(IN.c.instance_number.nulls_last(), IN.c.sop_uid))
    return _rows(index, "listing instances", _scoped(stmt, scope))


def instance(index: Transactions, scope: Collection[str] | None,
             sop_uid: str) -> dict[str, Any] | None:
    stmt = (select(IN.c.sop_uid, IN.c.object_key, IN.c.rows, IN.c.columns, SE.c.series_uid,
                   ST.c.study_uid, P.c.hospital)
            .select_from(IN.join(SE, IN.c.series_pk == SE.c.pk).join(ST, SE.c.study_pk == ST.c.pk)
                         .join(P, ST.c.patient_pk == P.c.pk))
            .where(IN.c.sop_uid == sop_uid))
    found = _rows(index, "finding an instance", _scoped(stmt, scope))
    return found[0] if found else None
