"""The index (catalog) of stored instances, on SQLite (embedded default) or PostgreSQL.

One :class:`Catalog` is shared by every thread of the node (one per DIMSE association).
Writes are single transactions that also maintain the study and series counts: the
catalog answers the reads itself and hands the rest to two modules of one concept each,
:mod:`node.index.transactions` (running work in a transaction: the SQLite writer lock, the
retries of PostgreSQL's races, error translation) and :mod:`node.index.hierarchy` (the
writes that add and remove instances and keep their patient, study and series whole).

Every database failure surfaces as :class:`node.errors.CatalogError`. Messages name UIDs and
the database's own short error text only: the engine hides bound parameters (which hold
PHI), and PostgreSQL's DETAIL lines (which quote row values) are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, Select, bindparam, delete, func, or_, select, update

from node.errors import CatalogError
from node.index import schema as s
from node.index.audit import Entry
from node.index.engine import make_engine, normalise_url
from node.index.hierarchy import HIERARCHY_JOIN as _HIERARCHY
from node.index.hierarchy import INSTANCE_FIELDS as _INSTANCE_FIELDS
from node.index.hierarchy import PATIENT_FIELDS as _PATIENT_FIELDS
from node.index.hierarchy import SERIES_FIELDS as _SERIES_FIELDS
from node.index.hierarchy import STUDY_FIELDS as _STUDY_FIELDS
from node.index.hierarchy import Hierarchy, insert_stmt
from node.index.records import ConflictRecord, InstanceRecord
from node.index.spooled import Spooled
from node.index.transactions import TransactionRunner
from node.index.upgrade import upgrade

T = TypeVar("T")

_YIELD_PER = 1000  # rows fetched at a time when listing
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
        self._tx = TransactionRunner(self._engine, self._url)
        self._hierarchy = Hierarchy(self._dialect)
        try:
            self._tx.write("opening the index", s.metadata.create_all)
            self._tx.write("upgrading the index", upgrade)
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
        inserted = self._tx.write(
            f"indexing instance {rec.sop_uid}",
            lambda conn: self._hierarchy.add(conn, rec, made, audit, spooled)
        )
        if made:  # only once committed
            self._hierarchy.remember(made)
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

        return self._tx.read(f"reading instance {sop_uid}", read)

    def get_instance(self, sop_uid: str) -> InstanceRecord | None:
        """Returns the full record of one instance, or None if it is not indexed.

        Raises:
            CatalogError: the database failed.
        """

        def read(conn: Connection) -> InstanceRecord | None:
            row = conn.execute(_GET_INSTANCE, {"k_sop_uid": sop_uid}).first()
            return None if row is None else InstanceRecord(**row._mapping)

        return self._tx.read(f"reading instance {sop_uid}", read)

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
        return self._tx.stream("listing instances", stmt, _record, _YIELD_PER)

    def set_labels(self, sop_uid: str, source: str | None) -> bool:
        """Records that an instance has a label map from ``source`` (None: no longer).

        Returns False when the instance is not indexed. Raises CatalogError.
        """
        stmt = update(s.instances).where(s.instances.c.sop_uid == sop_uid).values(
            labels=source)
        return self._tx.write(f"recording labels of {sop_uid}",
                           lambda conn: conn.execute(stmt).rowcount == 1)

    def remove_instance(self, sop_uid: str) -> bool:
        """Removes one instance, fixes the counts and removes emptied series, study, patient.

        Returns:
            True if it was removed, False if it was not indexed.

        Raises:
            CatalogError: the database failed.
        """
        self._hierarchy.forget()  # a series it empties is deleted
        return self._tx.write(
            f"removing instance {sop_uid}", lambda conn: self._hierarchy.remove(conn, sop_uid)
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
            stmt = insert_stmt(self._dialect, s.conflicts, ("sop_uid", "sha256"))
            return conn.scalar(stmt, values) is not None

        return self._tx.write(f"recording a conflict for instance {rec.sop_uid}", write)

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

        return self._tx.read("listing conflicts", read)

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
        return self._tx.read("looking up a patient", lambda conn: list(conn.scalars(stmt)))

    def hospitals(self) -> list[str]:
        """Returns the hospitals that have indexed patients, sorted.

        Raises:
            CatalogError: the database failed.
        """
        stmt = select(s.patients.c.hospital).distinct().order_by(s.patients.c.hospital)
        return self._tx.read("listing hospitals", lambda conn: list(conn.scalars(stmt)))

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

        return self._tx.read("counting rows", read)

    def clear(self) -> None:
        """Deletes every row of the index tables, in one transaction (for ``reindex``).

        Raises:
            CatalogError: the database failed.
        """

        def write(conn: Connection) -> None:
            for table in s.INDEX_TABLES:
                conn.execute(delete(table))

        self._hierarchy.forget()
        self._tx.write("clearing the index", write)

    # ---- transactions -------------------------------------------------------------------

    def transaction(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` in one write transaction (serialised on SQLite, retried after a
        lost race on PostgreSQL), for modules that keep their own tables (jobs, state).

        Raises:
            CatalogError: the database failed; ``what`` names the work in the message.
        """
        return self._tx.write(what, work)

    def reading(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` on a connection of its own, outside any write transaction.

        Raises:
            CatalogError: the database failed.
        """
        return self._tx.read(what, work)


# ---- helpers --------------------------------------------------------------------------------


def _record_select() -> Select[Any]:
    return select(*_RECORD_COLUMNS).select_from(_HIERARCHY)


def _record(row: Row[Any]) -> InstanceRecord:
    return InstanceRecord(**row._mapping)


# Statements are built once and reused: building and hashing a new expression for every
# instance costs more than running it on SQLite.

_INSTANCE_DIGEST = select(s.instances.c.sha256, s.instances.c.object_key).where(
    s.instances.c.sop_uid == bindparam("k_sop_uid")
)
_GET_INSTANCE = _record_select().where(s.instances.c.sop_uid == bindparam("k_sop_uid"))


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
