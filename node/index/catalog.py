"""The index (catalog) of stored instances, on SQLite (embedded default) or PostgreSQL.

One :class:`Catalog` is shared by every thread of the node (one per DIMSE association).
Writes are single transactions that also maintain the study and series counts. On SQLite,
writers are serialised by a lock in Python and open their transaction with BEGIN IMMEDIATE,
so that they queue instead of failing with "database is locked"; PostgreSQL needs no lock,
and its rare races between transactions (a row created or removed concurrently, a deadlock)
are retried.

Every database failure surfaces as :class:`node.errors.CatalogError`. Messages name UIDs and
the database's own short error text only: the engine hides bound parameters (which hold
PHI), and PostgreSQL's DETAIL lines (which quote row values) are left out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any, TypeVar

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
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from node.errors import CatalogError, UidCollisionError
from node.index import schema as s
from node.index.attributes import Level, described_at
from node.index.audit import Entry, entry_in
from node.index.engine import (
    describe_error,
    make_engine,
    normalise_url,
    sqlite_lock_for,
    sqlstate,
)
from node.index.jobs import enqueue
from node.index.records import ConflictRecord, InstanceRecord, State
from node.index.spooled import Spooled
from node.index.spooled import insert_in as insert_spooled
from node.index.upgrade import upgrade

T = TypeVar("T")

_ATTEMPTS = 5  # PostgreSQL: tries of a write transaction that lost a race
_YIELD_PER = 1000  # rows fetched at a time when listing
# PostgreSQL SQLSTATEs that mean "another transaction got in the way; run it again":
# unique_violation, foreign_key_violation, serialization_failure, deadlock_detected.
_RETRYABLE_SQLSTATES = frozenset({"23505", "23503", "40001", "40P01"})

# Record field -> column, level by level. The key columns (hospital, patient_key and the
# UIDs) are handled separately because they identify the row rather than describe it.
_PATIENT_FIELDS = {a.field: a.column for a in described_at(Level.PATIENT)}
_STUDY_FIELDS = {a.field: a.column for a in described_at(Level.STUDY)}
_SERIES_FIELDS = {a.field: a.column for a in described_at(Level.SERIES)}
_INSTANCE_FIELDS = {
    **{name: name for name in ("sop_uid", "sop_class_uid", "transfer_syntax_uid", "object_key",
                               "sha256", "size", "calling_ae", "received_at", "state", "blank",
                               "recipe_id", "labels")},
    **{a.field: a.column for a in described_at(Level.IMAGE)},
}
_CONFLICT_FIELDS = ("sop_uid", "sha256", "size", "object_key", "calling_ae", "received_at")

# The columns of an InstanceRecord, labelled with the record's field names.
_RECORD_COLUMNS = [
    s.patients.c.hospital,
    s.patients.c.patient_key,
    s.studies.c.study_uid,
    s.series.c.series_uid,
    *(s.patients.c[col].label(field) for field, col in _PATIENT_FIELDS.items()),
    *(s.studies.c[col].label(field) for field, col in _STUDY_FIELDS.items()),
    *(s.series.c[col].label(field) for field, col in _SERIES_FIELDS.items()),
    *(s.instances.c[col].label(field) for field, col in _INSTANCE_FIELDS.items()),
]
_HIERARCHY = (
    s.instances.join(s.series, s.instances.c.series_pk == s.series.c.pk)
    .join(s.studies, s.series.c.study_pk == s.studies.c.pk)
    .join(s.patients, s.studies.c.patient_pk == s.patients.c.pk)
)
# The paper's hierarchical order; NULLS LAST spelled out because the dialects differ.
_HIERARCHY_ORDER = (
    s.patients.c.hospital,
    s.patients.c.patient_key,
    s.studies.c.study_date.nulls_last(),
    s.studies.c.study_uid,
    s.series.c.series_number.nulls_last(),
    s.series.c.series_uid,
    s.instances.c.instance_number.nulls_last(),
    s.instances.c.sop_uid,
)



class _Rollback(Exception):  # control flow, not an error
    """Raised inside a write transaction to roll it back and return ``value``."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


class _Retry(Exception):  # control flow, not an error
    """Raised inside a write transaction that lost a race: roll back and run it again."""


class Catalog:
    """The SQL index of stored instances; thread-safe, one per process is enough.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/index.db`` or
            ``postgresql+psycopg://user:password@host/db`` (``postgresql://`` is taken to
            mean the psycopg driver). ``sqlite://`` (in memory) is for single-threaded
            tests only.

    Raises:
        CatalogError: the URL is unusable, or the database cannot be reached or its
            tables cannot be created.
    """

    def __init__(self, url: str) -> None:
        self._url = normalise_url(url)
        self._engine = make_engine(self._url)
        self._dialect = self._engine.dialect.name
        # series_uid -> (series pk, study pk) of committed rows. SQLite only: its writers
        # are serialised, so skipping the hierarchy look-ups cannot race; PostgreSQL keeps
        # the top-down locking of the full path.
        self._series_cache: dict[tuple[str, str, str], tuple[int, int, int]] = {}
        self._writer_lock: AbstractContextManager[Any] = (
            sqlite_lock_for(self._url) if self._dialect == "sqlite" else nullcontext()
        )
        try:
            self._write("opening the index", s.metadata.create_all)
            self._write("upgrading the index", upgrade)
        except CatalogError:
            self._engine.dispose()
            raise

    # ---- life cycle ---------------------------------------------------------------------

    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine, for read-only query modules (``node.index.query``)."""
        return self._engine

    @property
    def url(self) -> str:
        """Returns the database URL with the password masked."""
        return self._url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Catalog({self.url!r})"

    def close(self) -> None:
        """Closes every pooled connection. Streams still open keep theirs until done."""
        self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- instances ----------------------------------------------------------------------

    def add_instance(self, rec: InstanceRecord, audit: Entry | None = None,
                     spooled: Sequence[Spooled] = ()) -> bool:
        """Indexes one instance, creating or completing its patient, study and series.

        ``audit``: an entry of the audit trail, appended in the same transaction.
        ``spooled``: where its objects wait in a local spool (node.store.spool), recorded
        in the same transaction.

        Counts and modalities_in_study are updated in the same transaction. Descriptive
        attributes already stored are kept; NULLs are filled from ``rec``.

        Returns:
            True if inserted; False if an instance with this SOP Instance UID is already
            indexed (nothing is changed).

        Raises:
            ValueError: ``rec.received_at`` has no time zone.
            UidCollisionError: its study is another patient's (or hospital's), or its
                series another study's; nothing is changed.
            CatalogError: the database failed.
        """
        _require_aware(rec.received_at, "received_at")
        made: dict[tuple[str, str, str], tuple[int, int, int]] = {}
        inserted = self._write(
            f"indexing instance {rec.sop_uid}",
            lambda conn: self._add_instance(conn, rec, made, audit, spooled)
        )
        if made and self._dialect == "sqlite":  # only once committed
            if len(self._series_cache) > 4096:
                self._series_cache.clear()
            self._series_cache.update(made)
        return inserted

    def known_digest(self, sop_uid: str) -> tuple[str, str] | None:
        """Returns (sha256, object_key) of an indexed instance, or None: the cheap check
        that ingest makes before writing anything.

        Raises:
            CatalogError: the database failed.
        """

        def read(conn: Connection) -> tuple[str, str] | None:
            row = conn.execute(_INSTANCE_DIGEST, {"k_sop_uid": sop_uid}).first()
            return None if row is None else (row.sha256, row.object_key)

        return self._read(f"reading instance {sop_uid}", read)

    def get_instance(self, sop_uid: str) -> InstanceRecord | None:
        """Returns the full record of one instance, or None if it is not indexed.

        Raises:
            CatalogError: the database failed.
        """

        def read(conn: Connection) -> InstanceRecord | None:
            row = conn.execute(_GET_INSTANCE, {"k_sop_uid": sop_uid}).first()
            return None if row is None else InstanceRecord(**row._mapping)

        return self._read(f"reading instance {sop_uid}", read)

    def instances(
        self,
        hospital: str | None = None,
        patient_key: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
        sop_uid: str | None = None,
        blank: bool | None = None,
    ) -> Iterator[InstanceRecord]:
        """Yields indexed instances in hierarchical order, streamed from the database.

        ``blank``: True lists only images the filter flagged; False leaves them out (and
        keeps the ones not judged yet).

        Each given argument narrows the listing; those left out match everything, so
        ``instances(h, p)`` lists every instance of patient ``p`` of hospital ``h``. The
        order is hospital, patient key, study date and UID, series number and UID,
        instance number and UID (missing numbers and dates last).

        The stream holds one database connection until it is exhausted or closed.

        Raises:
            CatalogError: the database failed (raised from the iteration).
        """
        stmt = _record_select().order_by(*_HIERARCHY_ORDER)
        filters = (
            (s.patients.c.hospital, hospital),
            (s.patients.c.patient_key, patient_key),
            (s.studies.c.study_uid, study_uid),
            (s.series.c.series_uid, series_uid),
            (s.instances.c.sop_uid, sop_uid),
        )
        for column, value in filters:
            if value is not None:
                stmt = stmt.where(column == value)
        if blank is True:
            stmt = stmt.where(s.instances.c.blank.is_(True))
        elif blank is False:
            stmt = stmt.where(or_(s.instances.c.blank.is_(None), s.instances.c.blank.is_(False)))
        return self._stream("listing instances", stmt)

    def set_labels(self, sop_uid: str, source: str | None) -> bool:
        """Records that an instance has a label map from ``source`` (None: no longer).

        Returns False when the instance is not indexed. Raises CatalogError.
        """
        stmt = update(s.instances).where(s.instances.c.sop_uid == sop_uid).values(
            labels=source)
        return self._write(f"recording labels of {sop_uid}",
                           lambda conn: conn.execute(stmt).rowcount == 1)

    def remove_instance(self, sop_uid: str) -> bool:
        """Removes one instance, fixes the counts and removes emptied series, study, patient.

        Returns:
            True if it was removed, False if it was not indexed.

        Raises:
            CatalogError: the database failed.
        """
        self._series_cache.clear()  # a series it empties is deleted
        return self._write(
            f"removing instance {sop_uid}", lambda conn: self._remove_instance(conn, sop_uid)
        )

    # ---- conflicts ----------------------------------------------------------------------

    def add_conflict(self, rec: ConflictRecord) -> bool:
        """Records a different instance that arrived under an already stored SOP UID.

        Returns:
            True if recorded; False if this (sop_uid, sha256) is recorded already.

        Raises:
            ValueError: ``rec.received_at`` has no time zone.
            UidCollisionError: its study is another patient's (or hospital's), or its
                series another study's; nothing is changed.
            CatalogError: the database failed.
        """
        _require_aware(rec.received_at, "received_at")
        values = {col: getattr(rec, col) for col in _CONFLICT_FIELDS}

        def write(conn: Connection) -> bool:
            stmt = self._insert(s.conflicts, ("sop_uid", "sha256"))
            return conn.scalar(stmt, values) is not None

        return self._write(f"recording a conflict for instance {rec.sop_uid}", write)

    def conflicts(self, sop_uid: str | None = None) -> list[ConflictRecord]:
        """Returns the recorded conflicts, of one SOP UID or all, oldest first.

        Raises:
            CatalogError: the database failed.
        """
        stmt = select(*(s.conflicts.c[col] for col in _CONFLICT_FIELDS)).order_by(
            s.conflicts.c.received_at, s.conflicts.c.pk
        )
        if sop_uid is not None:
            stmt = stmt.where(s.conflicts.c.sop_uid == sop_uid)

        def read(conn: Connection) -> list[ConflictRecord]:
            return [ConflictRecord(**row._mapping) for row in conn.execute(stmt)]

        return self._read("listing conflicts", read)

    # ---- lookups and maintenance --------------------------------------------------------

    def patient_keys_for_id(self, hospital: str | None, patient_id: str) -> list[str]:
        """Returns the pseudonyms of the patients with this Patient ID, sorted.

        Args:
            hospital: restricts the search to one hospital; None searches all of them.
            patient_id: the Patient ID (0010,0020) as received.

        Raises:
            CatalogError: the database failed.
        """
        stmt = (
            select(s.patients.c.patient_key)
            .distinct()
            .where(s.patients.c.patient_id == patient_id)
            .order_by(s.patients.c.patient_key)
        )
        if hospital is not None:
            stmt = stmt.where(s.patients.c.hospital == hospital)
        return self._read("looking up a patient", lambda conn: list(conn.scalars(stmt)))

    def hospitals(self) -> list[str]:
        """Returns the hospitals that have indexed patients, sorted.

        Raises:
            CatalogError: the database failed.
        """
        stmt = select(s.patients.c.hospital).distinct().order_by(s.patients.c.hospital)
        return self._read("listing hospitals", lambda conn: list(conn.scalars(stmt)))

    def counts(self) -> dict[str, int]:
        """Returns the number of rows of each level: patients, studies, series, instances,
        conflicts.

        Raises:
            CatalogError: the database failed.
        """
        tables = (s.patients, s.studies, s.series, s.instances, s.conflicts)

        def read(conn: Connection) -> dict[str, int]:
            return {
                t.name: int(conn.scalar(select(func.count()).select_from(t)) or 0) for t in tables
            }

        return self._read("counting rows", read)

    def clear(self) -> None:
        """Deletes every row of the index tables, in one transaction (for ``reindex``).

        Raises:
            CatalogError: the database failed.
        """

        def write(conn: Connection) -> None:
            for table in s.INDEX_TABLES:
                conn.execute(delete(table))

        self._series_cache.clear()
        self._write("clearing the index", write)

    # ---- transactions -------------------------------------------------------------------

    def transaction(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` in one write transaction (serialised on SQLite, retried after a
        lost race on PostgreSQL), for modules that keep their own tables (jobs, state).

        Raises:
            CatalogError: the database failed; ``what`` names the work in the message.
        """
        return self._write(what, work)

    def reading(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` on a connection of its own, outside any write transaction.

        Raises:
            CatalogError: the database failed.
        """
        return self._read(what, work)

    def _write(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` in one write transaction, retrying races on PostgreSQL.

        ``work`` may raise :class:`_Rollback` to roll back and return a value, or
        :class:`_Retry` to run again.

        Returns:
            What ``work`` returned.

        Raises:
            CatalogError: the database failed, or the race was lost ``_ATTEMPTS`` times.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return self._write_once(work)
            except _Rollback as stop:
                return stop.value  # type: ignore[no-any-return]
            except _Retry as exc:
                if attempt == _ATTEMPTS:
                    raise CatalogError(f"{what} failed: lost a race {attempt} times") from exc
            except DBAPIError as exc:
                if attempt == _ATTEMPTS or not self._retryable(exc):
                    raise CatalogError(f"{what} failed: {describe_error(exc)}") from exc
            except SQLAlchemyError as exc:
                raise CatalogError(f"{what} failed: {describe_error(exc)}") from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    def _write_once(self, work: Callable[[Connection], T]) -> T:
        with self._writer_lock, self._engine.connect() as conn:
            # Read by _sqlite_on_begin: take the write lock now, not on the first write,
            # so that the transaction never has to upgrade a read snapshot (which fails
            # at once with SQLITE_BUSY instead of waiting).
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                return work(conn)

    def _read(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` on a connection of its own, without the writer lock.

        Returns:
            What ``work`` returned.

        Raises:
            CatalogError: the database failed.
        """
        try:
            with self._engine.connect() as conn:
                return work(conn)
        except SQLAlchemyError as exc:
            raise CatalogError(f"{what} failed: {describe_error(exc)}") from exc

    def _stream(self, what: str, stmt: Select[Any]) -> Iterator[InstanceRecord]:
        """Yields the records of ``stmt`` a batch at a time (a server-side cursor on
        PostgreSQL), so that a listing of the whole index does not sit in memory.

        Raises:
            CatalogError: the database failed.
        """
        try:
            with self._engine.connect() as conn:
                result = conn.execution_options(yield_per=_YIELD_PER).execute(stmt)
                for row in result:
                    yield InstanceRecord(**row._mapping)
        except SQLAlchemyError as exc:
            raise CatalogError(f"{what} failed: {describe_error(exc)}") from exc

    def _retryable(self, exc: DBAPIError) -> bool:
        # SQLite writers are serialised, so they never race; a busy database has already
        # waited out the busy timeout and is reported.
        return self._dialect == "postgresql" and sqlstate(exc) in _RETRYABLE_SQLSTATES

    def _insert(self, table: Table, conflict_cols: tuple[str, ...]) -> Any:
        """Returns INSERT ... ON CONFLICT (conflict_cols) DO NOTHING RETURNING pk; the
        columns come from the parameters it is executed with."""
        return _insert_stmt(self._dialect, table, conflict_cols)

    # ---- the work of add_instance -------------------------------------------------------

    def _add_cached(self, conn: Connection, rec: InstanceRecord, audit: Entry | None,
                    spooled: Sequence[Spooled],
                    series_pk: int, study_pk: int, patient_pk: int) -> bool:
        """The add of a further instance of a series this process indexed before: the
        instance row and the counts only (SQLite, writers serialised)."""
        # Another process may have removed the series (and SQLite may reuse its pk).
        if conn.scalar(_SERIES_STILL, {"k_pk": series_pk, "k_uid": rec.series_uid}) is None:
            self._series_cache.pop(_cache_key(rec), None)
            raise _Retry()
        self._insert_instance(conn, rec, series_pk, audit, spooled)
        _update_row(conn, s.patients, patient_pk, fill=_present(rec, _PATIENT_FIELDS))
        self._bump_study(conn, study_pk, rec.modality, _present(rec, _STUDY_FIELDS), False)
        _update_row(conn, s.series, series_pk, fill=_present(rec, _SERIES_FIELDS),
                    increment=("number_of_instances",), assign=_arrival(rec))
        return True

    def _insert_instance(self, conn: Connection, rec: InstanceRecord, series_pk: int,
                         audit: Entry | None = None, spooled: Sequence[Spooled] = ()) -> None:
        """Inserts the instance row and, for a queued instance, its processing job.

        Raises _Rollback(False) when another transaction indexed it since our check (the
        parents this transaction made are undone with it).
        """
        row = {col: getattr(rec, f) for f, col in _INSTANCE_FIELDS.items()}
        inserted = conn.scalar(
            self._insert(s.instances, ("sop_uid",)), {"series_pk": series_pk, **row}
        )
        if inserted is None:
            raise _Rollback(False)
        if rec.state == State.QUEUED:
            enqueue(conn, [rec.sop_uid], rec.received_at)
        if audit is not None:
            entry_in(conn, audit)
        insert_spooled(conn, spooled)

    def _add_instance(self, conn: Connection, rec: InstanceRecord,
                      made: dict[tuple[str, str, str], tuple[int, int, int]],
                      audit: Entry | None = None, spooled: Sequence[Spooled] = ()) -> bool:
        """Returns True once the instance row and its hierarchy are written.

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
        patient = _present(rec, _PATIENT_FIELDS)
        patient_pk, _ = self._get_or_create(
            conn, s.patients, {"hospital": rec.hospital, "patient_key": rec.patient_key}, patient
        )
        _update_row(conn, s.patients, patient_pk, fill=patient)
        study = _present(rec, _STUDY_FIELDS)
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
        series = _present(rec, _SERIES_FIELDS)
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
            _Retry: the row was created and removed again by others meanwhile.
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
            raise _Retry()
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

    def _remove_instance(self, conn: Connection, sop_uid: str) -> bool:
        """Returns True once the instance is deleted and its parents fixed."""
        found = conn.execute(
            select(
                s.instances.c.pk,
                s.instances.c.series_pk,
                s.series.c.study_pk,
                s.studies.c.patient_pk,
            )
            .select_from(_HIERARCHY)
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
            raise _Retry()
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


# ---- helpers --------------------------------------------------------------------------------


def _record_select() -> Select[Any]:
    return select(*_RECORD_COLUMNS).select_from(_HIERARCHY)


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


# Statements are built once and reused: building and hashing a new expression for every
# instance costs more than running it on SQLite.

_STUDY_PATIENT = select(s.studies.c.patient_pk).where(s.studies.c.pk == bindparam("k_pk"))
_SERIES_STUDY = select(s.series.c.study_pk).where(s.series.c.pk == bindparam("k_pk"))
_INSTANCE_EXISTS = select(s.instances.c.pk).where(s.instances.c.sop_uid == bindparam("k_sop_uid"))
_SERIES_STILL = select(s.series.c.pk).where(
    s.series.c.pk == bindparam("k_pk"), s.series.c.series_uid == bindparam("k_uid")
)
_INSTANCE_DIGEST = select(s.instances.c.sha256, s.instances.c.object_key).where(
    s.instances.c.sop_uid == bindparam("k_sop_uid")
)
_GET_INSTANCE = _record_select().where(s.instances.c.sop_uid == bindparam("k_sop_uid"))
_STUDY_MODALITIES = select(s.studies.c.modalities_in_study).where(
    s.studies.c.pk == bindparam("k_pk")
)


@functools.cache
def _find_stmt(table: Table, key_cols: tuple[str, ...], lock: bool) -> Select[Any]:
    """Returns SELECT pk WHERE each key column = :k_<column> [FOR NO KEY UPDATE]."""
    stmt = select(table.c.pk).where(*(table.c[col] == bindparam(f"k_{col}") for col in key_cols))
    return stmt.with_for_update(key_share=True) if lock else stmt


@functools.cache
def _insert_stmt(dialect: str, table: Table, conflict_cols: tuple[str, ...]) -> Any:
    """Returns the dialect's INSERT ... ON CONFLICT (conflict_cols) DO NOTHING RETURNING pk."""
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        dialect_insert(table)
        .on_conflict_do_nothing(index_elements=list(conflict_cols))
        .returning(table.c.pk)
    )


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


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
