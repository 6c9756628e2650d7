"""The writes that keep the patient / study / series / instance hierarchy whole.

Adding an instance creates or completes its patient, study and series and counts it in
them; removing one uncounts it and removes the series, study and patient it empties. Both
run inside a write transaction of :class:`node.index.transactions.TransactionRunner` and
steer it with its ``Rollback`` and ``Retry``.

On PostgreSQL both lock the hierarchy top-down (patient, study), so that adds and removals
cannot deadlock. On SQLite, whose writers are serialised, a further instance of a series
this process indexed before skips the hierarchy look-ups (the series cache).

Statements are built once and reused: building and hashing a new expression for every
instance costs more than running it on SQLite.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    Table,
    Update,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from node.errors import UidCollisionError
from node.index import schema as s
from node.index.attributes import Level, described_at
from node.index.audit import Entry, entry_in
from node.index.jobs import enqueue
from node.index.records import InstanceRecord, State
from node.index.spooled import Spooled
from node.index.spooled import insert_in as insert_spooled
from node.index.transactions import Retry, Rollback

# Record field -> column, level by level. The key columns (hospital, patient_key and the
# UIDs) are handled separately because they identify the row rather than describe it.
PATIENT_FIELDS = {a.field: a.column for a in described_at(Level.PATIENT)}
STUDY_FIELDS = {a.field: a.column for a in described_at(Level.STUDY)}
SERIES_FIELDS = {a.field: a.column for a in described_at(Level.SERIES)}
INSTANCE_FIELDS = {
    **{name: name for name in ("sop_uid", "sop_class_uid", "transfer_syntax_uid", "object_key",
                               "sha256", "size", "calling_ae", "received_at", "state", "blank",
                               "recipe_id", "labels")},
    **{a.field: a.column for a in described_at(Level.IMAGE)},
}

# Every instance joined to its series, study and patient.
HIERARCHY_JOIN = (
    s.instances.join(s.series, s.instances.c.series_pk == s.series.c.pk)
    .join(s.studies, s.series.c.study_pk == s.studies.c.pk)
    .join(s.patients, s.studies.c.patient_pk == s.patients.c.pk)
)

# (hospital, patient_key, series_uid) -> (series pk, study pk, patient pk)
_SeriesCache = dict[tuple[str, str, str], tuple[int, int, int]]


class Hierarchy:
    """The add and the removal of instances, with the series cache; one per Catalog.

    Args:
        dialect: the database's dialect name (``sqlite`` or ``postgresql``).
    """

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect
        # series_uid -> (series pk, study pk) of committed rows. SQLite only: its writers
        # are serialised, so skipping the hierarchy look-ups cannot race; PostgreSQL keeps
        # the top-down locking of the full path.
        self._series_cache: _SeriesCache = {}

    def remember(self, made: _SeriesCache) -> None:
        """Caches the series that :meth:`add` resolved, once its transaction committed."""
        if self._dialect != "sqlite":
            return
        if len(self._series_cache) > 4096:
            self._series_cache.clear()
        self._series_cache.update(made)

    def forget(self) -> None:
        """Empties the series cache: series may be deleted."""
        self._series_cache.clear()

    def _insert(self, table: Table, conflict_cols: tuple[str, ...]) -> Any:
        """Returns INSERT ... ON CONFLICT (conflict_cols) DO NOTHING RETURNING pk; the
        columns come from the parameters it is executed with."""
        return insert_stmt(self._dialect, table, conflict_cols)

    # ---- the work of add_instance -------------------------------------------------------

    def add(self, conn: Connection, rec: InstanceRecord, made: _SeriesCache,
            audit: Entry | None = None, spooled: Sequence[Spooled] = ()) -> bool:
        """Returns True once the instance row and its hierarchy are written; records the
        series it resolved in ``made``, for :meth:`remember` after the commit.

        On PostgreSQL the hierarchy is locked top-down (patient, study), the order in which
        remove_instance locks it, so that adds and removals cannot deadlock: the patient
        row only if it has NULLs to fill, the study row always (it serialises the adds of
        one study, which all update its counts anyway).
        """
        cached = self._series_cache.get(_cache_key(rec))
        if cached is not None:
            return self._add_cached(conn, rec, audit, spooled, *cached)
        if conn.scalar(_INSTANCE_EXISTS, {"k_sop_uid": rec.sop_uid}) is not None:
            return False
        patient = _present(rec, PATIENT_FIELDS)
        patient_pk, _ = self._get_or_create(
            conn, s.patients, {"hospital": rec.hospital, "patient_key": rec.patient_key}, patient
        )
        _update_row(conn, s.patients, patient_pk, fill=patient)
        study = _present(rec, STUDY_FIELDS)
        study_pk, new_study = self._get_or_create(
            conn,
            s.studies,
            {"study_uid": rec.study_uid},
            {"patient_pk": patient_pk, **study},
            lock=True,
        )
        if not new_study and conn.scalar(_STUDY_PATIENT, {"k_pk": study_pk}) != patient_pk:
            raise UidCollisionError("its Study Instance UID belongs to another patient's "
                                    "study (or another hospital's)")
        series = _present(rec, SERIES_FIELDS)
        series_pk, new_series = self._get_or_create(
            conn, s.series, {"series_uid": rec.series_uid}, {"study_pk": study_pk, **series}
        )
        if not new_series and conn.scalar(_SERIES_STUDY, {"k_pk": series_pk}) != study_pk:
            raise UidCollisionError("its Series Instance UID belongs to another study")
        self._insert_instance(conn, rec, series_pk, audit, spooled)
        self._bump_study(conn, study_pk, rec.modality, study, new_series)
        _update_row(conn, s.series, series_pk, fill=series, increment=("number_of_instances",),
                    assign=_arrival(rec))
        made[_cache_key(rec)] = (series_pk, study_pk, patient_pk)
        return True

    def _add_cached(self, conn: Connection, rec: InstanceRecord, audit: Entry | None,
                    spooled: Sequence[Spooled],
                    series_pk: int, study_pk: int, patient_pk: int) -> bool:
        """The add of a further instance of a series this process indexed before: the
        instance row and the counts only (SQLite, writers serialised)."""
        # Another process may have removed the series (and SQLite may reuse its pk).
        if conn.scalar(_SERIES_STILL, {"k_pk": series_pk, "k_uid": rec.series_uid}) is None:
            self._series_cache.pop(_cache_key(rec), None)
            raise Retry()
        self._insert_instance(conn, rec, series_pk, audit, spooled)
        _update_row(conn, s.patients, patient_pk, fill=_present(rec, PATIENT_FIELDS))
        self._bump_study(conn, study_pk, rec.modality, _present(rec, STUDY_FIELDS), False)
        _update_row(conn, s.series, series_pk, fill=_present(rec, SERIES_FIELDS),
                    increment=("number_of_instances",), assign=_arrival(rec))
        return True

    def _insert_instance(self, conn: Connection, rec: InstanceRecord, series_pk: int,
                         audit: Entry | None = None, spooled: Sequence[Spooled] = ()) -> None:
        """Inserts the instance row and, for a queued instance, its processing job.

        Raises Rollback(False) when another transaction indexed it since our check (the
        parents this transaction made are undone with it).
        """
        row = {col: getattr(rec, f) for f, col in INSTANCE_FIELDS.items()}
        inserted = conn.scalar(
            self._insert(s.instances, ("sop_uid",)), {"series_pk": series_pk, **row}
        )
        if inserted is None:
            raise Rollback(False)
        if rec.state == State.QUEUED:
            enqueue(conn, [rec.sop_uid], rec.received_at)
        if audit is not None:
            entry_in(conn, audit)
        insert_spooled(conn, spooled)

    def _get_or_create(
        self,
        conn: Connection,
        table: Table,
        key: dict[str, Any],
        values: dict[str, Any],
        lock: bool = False,
    ) -> tuple[int, bool]:
        """Finds the row of ``table`` with ``key``, inserting it with ``values`` if absent.

        Args:
            lock: lock a found row until the end of the transaction (FOR NO KEY UPDATE,
                which still lets others insert children of it). A created row needs no
                lock: no one else sees it before the commit.

        Returns:
            (pk, created).

        Raises:
            Retry: the row was created and removed again by others meanwhile.
        """
        find = _find_stmt(table, tuple(key), lock)
        find_params = {f"k_{col}": value for col, value in key.items()}
        pk = conn.scalar(find, find_params)
        if pk is not None:
            return pk, False
        # ON CONFLICT DO NOTHING: a concurrent creator wins without failing this transaction.
        pk = conn.scalar(self._insert(table, tuple(key)), {**key, **values})
        if pk is not None:
            return pk, True
        # Lost the race: PostgreSQL waited for the winner to commit, so a new statement
        # sees its row.
        pk = conn.scalar(find, find_params)
        if pk is None:
            raise Retry()
        return pk, False

    def _bump_study(
        self,
        conn: Connection,
        study_pk: int,
        modality: str | None,
        fill: dict[str, Any],
        new_series: bool,
    ) -> None:
        """Counts the instance (and its series, if new) in its study and merges its
        modality into modalities_in_study; fills NULL attributes from ``fill``.

        The study row is locked (or new), so the merge in Python cannot lose an update.
        """
        current = conn.scalar(_STUDY_MODALITIES, {"k_pk": study_pk})
        increment = ("number_of_instances", "number_of_series")
        merged = _merge_modalities(current, modality)
        _update_row(
            conn,
            s.studies,
            study_pk,
            fill=fill,
            increment=increment if new_series else increment[:1],
            assign={"modalities_in_study": merged} if merged != current else {},
        )

    # ---- the work of remove_instance ----------------------------------------------------

    def remove(self, conn: Connection, sop_uid: str) -> bool:
        """Returns True once the instance is deleted and its parents fixed; False if it
        is not indexed. Call :meth:`forget` first: a series it empties is deleted."""
        found = conn.execute(
            select(
                s.instances.c.pk,
                s.instances.c.series_pk,
                s.series.c.study_pk,
                s.studies.c.patient_pk,
            )
            .select_from(HIERARCHY_JOIN)
            .where(s.instances.c.sop_uid == sop_uid)
        ).first()
        if found is None:
            return False
        instance_pk, series_pk, study_pk, patient_pk = found
        # Lock top-down, as add_instance does, before changing anything. FOR UPDATE (not
        # NO KEY): the rows may be deleted, and adds must not insert children meanwhile.
        for table, pk in ((s.patients, patient_pk), (s.studies, study_pk)):
            conn.execute(select(table.c.pk).where(table.c.pk == pk).with_for_update())
        conn.execute(delete(s.jobs).where(s.jobs.c.target == sop_uid))
        if conn.execute(delete(s.instances).where(s.instances.c.pk == instance_pk)).rowcount != 1:
            # Changed by someone else meanwhile (removed, perhaps added again): look again.
            raise Retry()
        series_left = conn.scalar(
            update(s.series)
            .where(s.series.c.pk == series_pk)
            .values(number_of_instances=s.series.c.number_of_instances - 1)
            .returning(s.series.c.number_of_instances)
        )
        series_gone = not series_left
        if series_gone:
            conn.execute(delete(s.series).where(s.series.c.pk == series_pk))
        self._shrink_study(conn, study_pk, patient_pk, series_gone)
        return True

    def _shrink_study(
        self, conn: Connection, study_pk: int, patient_pk: int, series_gone: bool
    ) -> None:
        """Uncounts one instance (and its series, if gone) from the study; removes the
        study, and then the patient, once empty."""
        values: dict[str, Any] = {"number_of_instances": s.studies.c.number_of_instances - 1}
        if series_gone:
            values["number_of_series"] = s.studies.c.number_of_series - 1
            modalities = conn.scalars(
                select(s.series.c.modality)
                .distinct()
                .where(s.series.c.study_pk == study_pk, s.series.c.modality.is_not(None))
            )
            values["modalities_in_study"] = _merge_modalities(None, *modalities)
        left = conn.scalar(
            update(s.studies)
            .where(s.studies.c.pk == study_pk)
            .values(values)
            .returning(s.studies.c.number_of_instances)
        )
        if left:
            return
        conn.execute(delete(s.studies).where(s.studies.c.pk == study_pk))
        other_study = select(s.studies.c.pk).where(s.studies.c.patient_pk == patient_pk).limit(1)
        if conn.scalar(other_study) is None:
            conn.execute(delete(s.patients).where(s.patients.c.pk == patient_pk))


# ---- statements (built once, see the module docstring) --------------------------------------

_STUDY_PATIENT = select(s.studies.c.patient_pk).where(s.studies.c.pk == bindparam("k_pk"))
_SERIES_STUDY = select(s.series.c.study_pk).where(s.series.c.pk == bindparam("k_pk"))
_INSTANCE_EXISTS = select(s.instances.c.pk).where(s.instances.c.sop_uid == bindparam("k_sop_uid"))
_SERIES_STILL = select(s.series.c.pk).where(
    s.series.c.pk == bindparam("k_pk"), s.series.c.series_uid == bindparam("k_uid")
)
_STUDY_MODALITIES = select(s.studies.c.modalities_in_study).where(
    s.studies.c.pk == bindparam("k_pk")
)


@functools.cache
def insert_stmt(dialect: str, table: Table, conflict_cols: tuple[str, ...]) -> Any:
    """Returns the dialect's INSERT ... ON CONFLICT (conflict_cols) DO NOTHING RETURNING pk."""
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        dialect_insert(table)
        .on_conflict_do_nothing(index_elements=list(conflict_cols))
        .returning(table.c.pk)
    )


@functools.cache
def _find_stmt(table: Table, key_cols: tuple[str, ...], lock: bool) -> Select[Any]:
    """Returns SELECT pk WHERE each key column = :k_<column> [FOR NO KEY UPDATE]."""
    stmt = select(table.c.pk).where(*(table.c[col] == bindparam(f"k_{col}") for col in key_cols))
    return stmt.with_for_update(key_share=True) if lock else stmt


@functools.cache
def _update_stmt(
    table: Table, fill: tuple[str, ...], increment: tuple[str, ...], assign: tuple[str, ...]
) -> Update:
    """Returns UPDATE table SET fill = COALESCE(fill, :v_fill), increment = increment + 1,
    assign = :v_assign WHERE pk = :k_pk (AND some fill column IS NULL, if fill only)."""
    stmt = update(table).where(table.c.pk == bindparam("k_pk"))
    if not (increment or assign):
        stmt = stmt.where(or_(*(table.c[col].is_(None) for col in fill)))
    values: dict[str, Any] = {
        col: func.coalesce(table.c[col], bindparam(f"v_{col}", type_=table.c[col].type))
        for col in fill
    }
    values.update({col: table.c[col] + 1 for col in increment})
    values.update({col: bindparam(f"v_{col}", type_=table.c[col].type) for col in assign})
    return stmt.values(values)


# ---- helpers --------------------------------------------------------------------------------


def _present(rec: InstanceRecord, fields: Mapping[str, str]) -> dict[str, Any]:
    """Returns {column: value} for the record's fields that have a value."""
    return {col: getattr(rec, f) for f, col in fields.items() if getattr(rec, f) is not None}


def _update_row(
    conn: Connection,
    table: Table,
    pk: int,
    fill: dict[str, Any],
    increment: tuple[str, ...] = (),
    assign: dict[str, Any] | None = None,
) -> None:
    """Updates row ``pk``: the ``fill`` columns where NULL, +1 on the ``increment`` columns,
    and the ``assign`` columns.

    With ``fill`` only, the row is only touched (and locked) when it has a NULL to fill.
    """
    assign = assign or {}
    if not (fill or increment or assign):
        return
    stmt = _update_stmt(table, tuple(fill), increment, tuple(assign))
    params = {f"v_{col}": value for col, value in (fill | assign).items()}
    conn.execute(stmt, {"k_pk": pk, **params})


def _cache_key(rec: InstanceRecord) -> tuple[str, str, str]:
    """The series cache's key: the series of one patient of one hospital, so that an
    instance claiming the series UID from elsewhere misses it and meets the full checks."""
    return (rec.hospital, rec.patient_key, rec.series_uid)


def _merge_modalities(current: str | None, *modalities: str | None) -> str | None:
    """Returns the sorted, backslash-joined union of ``current`` and ``modalities``, or
    None if there are none."""
    known = set(current.split("\\")) if current else set()
    known.update(m for m in modalities if m)
    return "\\".join(sorted(known)) or None


def _arrival(rec: InstanceRecord) -> dict[str, Any]:
    """A new instance: the series was last added to now, and is open again if it was
    complete (a late instance makes it complete again, later)."""
    return {"last_received_at": rec.received_at, "complete_at": None}
