"""Tables of the index, in SQLAlchemy Core.

The hierarchy is patients > studies > series > instances, each child pointing at its parent
by an integer ``*_pk`` foreign key; ``conflicts`` stands apart. Counts on studies and series
are maintained by :class:`node.index.catalog.Catalog` in the same transaction as the instance
insert.

To extend the schema (e.g. the jobs table), add a ``Table`` on :data:`metadata` here: the
catalog's ``create_all`` picks it up. :data:`INDEX_TABLES` lists only the tables that the
catalog can rebuild from the stored objects (what ``clear()`` empties); add a new table there
only if ``reindex`` recreates its rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from node.index.attributes import Level, described_at

# Stable constraint names, so that a later migration tool can address them on both dialects.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
PrimaryKey = BigInteger().with_variant(Integer(), "sqlite")

# Identifiers (hospital, pseudonym, UIDs) compare bytewise on PostgreSQL too, so both
# dialects list in the same order and a prefix LIKE can use the b-tree index.
Ident = String().with_variant(String(collation="C"), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every dialect.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as
    naive UTC and marked UTC again when read. A naive value is taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        """Returns the value converted to UTC (naive on SQLite), or None."""
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> Any:
        """Returns the stored value as an aware UTC datetime, or None."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _pk() -> Column[Any]:
    return Column("pk", PrimaryKey, primary_key=True, autoincrement=True)


def _described(level: Level) -> list[Column[Any]]:
    """The columns of the described attributes of ``level`` (node.index.attributes)."""
    return [Column(a.column, Integer if a.integer else String, index=a.indexed)
            for a in described_at(level)]


def _fk(name: str, target: str) -> Column[Any]:
    # No ON DELETE CASCADE: the catalog removes children itself so that counts stay right.
    return Column(name, PrimaryKey, ForeignKey(target), nullable=False, index=True)


patients = Table(
    "patients",
    metadata,
    _pk(),
    Column("hospital", Ident, nullable=False),
    Column("patient_key", Ident, nullable=False),  # pseudonym
    *_described(Level.PATIENT),
    UniqueConstraint("hospital", "patient_key"),
)

studies = Table(
    "studies",
    metadata,
    _pk(),
    _fk("patient_pk", "patients.pk"),
    Column("study_uid", Ident, nullable=False, unique=True),
    *_described(Level.STUDY),
    Column("number_of_series", Integer, nullable=False, default=0),
    Column("number_of_instances", Integer, nullable=False, default=0),
    Column("modalities_in_study", String),  # backslash-joined, sorted
)

series = Table(
    "series",
    metadata,
    _pk(),
    _fk("study_pk", "studies.pk"),
    Column("series_uid", Ident, nullable=False, unique=True),
    *_described(Level.SERIES),  # expected_instances: Images in Acquisition
    Column("number_of_instances", Integer, nullable=False, default=0),
    # Series completion (node.index.series_watch): when its last instance arrived, how
    # many the header says to expect (expected_instances), when it was found complete.
    Column("last_received_at", UTCDateTime),
    Column("complete_at", UTCDateTime, index=True),  # the watch looks for NULLs often
)

instances = Table(
    "instances",
    metadata,
    _pk(),
    _fk("series_pk", "series.pk"),
    Column("sop_uid", Ident, nullable=False, unique=True),
    Column("sop_class_uid", String, nullable=False),
    Column("transfer_syntax_uid", String, nullable=False),
    *_described(Level.IMAGE),
    Column("object_key", String, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("calling_ae", String, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("state", String, nullable=False),  # node.index.records.State
    Column("blank", Boolean),  # the blank filter's verdict; NULL until processed
    Column("recipe_id", String),  # the recipe of output.npy; NULL until processed
    Column("labels", String),  # where labels.npy came from ("seg:<uid>", "import"); NULL: none
)

conflicts = Table(
    "conflicts",
    metadata,
    _pk(),
    Column("sop_uid", Ident, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("object_key", String, nullable=False),
    Column("calling_ae", String, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    # Also serves lookups by sop_uid (leading column).
    UniqueConstraint("sop_uid", "sha256"),
)

# Work to do on stored instances, taken by workers (node.index.jobs). A row exists from the
# transaction that indexes its instance until the transaction that records the result.
jobs = Table(
    "jobs",
    metadata,
    _pk(),
    Column("kind", String, nullable=False),  # "process" (later: "segment", "pretrain")
    Column("target", Ident, nullable=False),  # what it works on: a SOP Instance UID for "process"
    Column("params", String),  # JSON: for "process" the recipe; NULL: the worker's default
    Column("state", String, nullable=False),  # queued | running | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime),  # queued: not before; running: taken again after
    Column("worker", String),  # host~pid-namespace:pid of the worker that took it
    Column("token", String),  # changes with every take, so a late finish is not recorded
    Column("error", String),
    UniqueConstraint("kind", "target"),
    Index("ix_jobs_state_pk", "state", "pk"),
)

# Versioned shared state (the blank filter's PCA model): the version of the object under
# _state/{name}/ that is current, moved forward by compare-and-set.
node_state = Table(
    "node_state",
    metadata,
    Column("name", String, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Web API tokens (node.index.tokens): only a hash of each secret is kept.
tokens = Table(
    "tokens",
    metadata,
    _pk(),
    Column("name", String, nullable=False, unique=True),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("hospital", Ident),  # NULL: every hospital
    Column("scope", String, nullable=False),  # read | write | readwrite | admin
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    Column("pseudonymous", Boolean),  # sees pseudonyms only; NULL (older rows): false
)

# The audit trail (node.index.audit): who stored, queried, retrieved, exported or deleted
# what. Appended only; UIDs and names of callers, never PHI. Not cleared by reindex.
audit = Table(
    "audit",
    metadata,
    _pk(),
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("action", String, nullable=False),  # store | query | retrieve | export | delete
    Column("protocol", String, nullable=False),  # dimse | web | cli | api
    Column("caller", String, nullable=False),  # AE title, token name or OS user
    Column("hospital", String),  # where it went, or the scope it saw; NULL: every hospital
    Column("outcome", String, nullable=False),
    Column("study_uid", Ident),
    Column("series_uid", Ident),
    Column("sop_uid", Ident),
    Column("count", Integer),  # instances or matches concerned
    Column("detail", String),  # level and keys (never their values), destination, …
)

# The current version of every object that is rewritten in place (descriptions, outputs,
# previews, label maps, predictions): the SHA-256 of its 32-byte header, whose salt is new
# on every write (node.index.object_versions). Not cleared by reindex.
object_versions = Table(
    "object_versions",
    metadata,
    Column("path", Ident, primary_key=True),
    Column("header_sha256", String(64), nullable=False),
    Column("written_at", UTCDateTime, nullable=False),
)

# Objects acknowledged from a node's local spool and not yet in the object store
# (node.store.spool): where each one's ciphertext lies, in which node's spool, until that
# node's uploader has put it in the store. Not cleared by reindex (reindex refuses while
# any are left: the store does not hold them yet).
spooled = Table(
    "spooled",
    metadata,
    Column("path", Ident, primary_key=True),
    Column("spool", String(64), nullable=False),  # the spool's id (one per node home)
    Column("segment", String(128), nullable=False),  # a file of that spool
    Column("position", BigInteger, nullable=False),  # byte offset of the ciphertext
    Column("length", BigInteger, nullable=False),
    Column("spooled_at", UTCDateTime, nullable=False),
    Index("ix_spooled_spool_segment", "spool", "segment"),
)

# Children before parents: the order in which rows can be deleted. ``reindex`` requeues
# the jobs of instances whose description shows no result.
INDEX_TABLES: tuple[Table, ...] = (jobs, instances, series, studies, patients, conflicts)

__all__ = [
    "INDEX_TABLES",
    "UTCDateTime",
    "audit",
    "conflicts",
    "instances",
    "jobs",
    "metadata",
    "node_state",
    "object_versions",
    "patients",
    "series",
    "spooled",
    "studies",
    "tokens",
]
