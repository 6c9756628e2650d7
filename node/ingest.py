"""ingest.accept: the one path every instance takes into the node (C-STORE, import, STOW).

    1. parse the header (no pixel decode) and check the encoding is whole
    2. check it against what the sender said it was sending
    3. write the original, then its description, each encrypted and atomic, under its UID path
       (with a spool, ``[store] ack = "spool"``: append both, encrypted, to the local spool
       with one shared fdatasync; node.store.spool)
    4. index row, one transaction (with a spool: and where its objects wait)
    5. only now return: the caller acknowledges the sender

A store or index failure raises (StoreError / CatalogError) after removing what this call
wrote, so nothing half-written stays visible and the sender can retry. The same bytes
again are a no-op; different bytes under a known SOP Instance UID are kept apart as a
conflict and reported, never written over the first.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.uid import UID

from node import describe, metrics
from node.dicom.header import Header, parse
from node.dicom.jsonmodel import to_json
from node.errors import (
    CatalogError,
    InconsistentError,
    IngestError,
    StoreError,
    UidCollisionError,
    UidMismatchError,
)
from node.index.audit import AuditLog, Entry
from node.index.catalog import Catalog
from node.index.records import ConflictRecord, InstanceRecord
from node.layout import (
    CONFLICTS,
    DESCRIPTION,
    ORIGINAL,
    InstancePath,
    Pseudonymiser,
)
from node.patient_keys import PatientKeys
from node.store.spool import SpoolWriter
from node.uid_lock import UidLocks

log = logging.getLogger("support_node.ingest")


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Source:
    """Where an instance comes from: the hospital it is filed under, the entry point
    (``dimse``, ``web``, ``import``, ``api``), and who sent it (the calling AE title, the
    web token's name; empty for a local import)."""

    hospital: str
    via: str
    who: str = ""


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    sop_uid: str
    object_key: str
    derived: tuple[str, ...] = ()


class Ingest:
    """Accepts encoded instances into the encrypted store and the index.

    ``fs`` is the encrypted filesystem (paths relative to the store root).
    """

    def __init__(self, fs: Any, catalog: Catalog, keys: Pseudonymiser,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 max_bytes: int | None = None, locks: UidLocks | None = None,
                 audit: AuditLog | None = None, spool: SpoolWriter | None = None) -> None:
        self.fs = fs
        self.spool = spool
        self.audit = audit
        self.max_bytes = max_bytes
        # Two receipts of one SOP Instance UID (threads, receiving processes, nodes) must
        # not both write its path: each holds the UID from the index check to the commit.
        self.locks = locks or UidLocks(None)
        self.catalog = catalog
        self.keys = keys
        self.patient_keys = PatientKeys(keys, catalog)
        self.clock = clock

    def accept(self, data: bytes, source: Source, *, sop_class_uid: str | None = None,
               sop_instance_uid: str | None = None, study_uid: str | None = None,
               max_bytes: int | None = None) -> Result:
        """Stores one instance durably, or raises.

        ``sop_class_uid`` / ``sop_instance_uid``: what the command said it carries (C-STORE);
        ``study_uid``: the study it must belong to (STOW-RS to ``/studies/{study}``).
        ``max_bytes``: the largest instance accepted, as given and once inflated (default:
        the node's ``[dimse] max_instance_bytes``).
        Returns the outcome (stored, duplicate, conflict) and where the instance lives.
        Raises:
            MalformedError: not DICOM or cut short.
            TooLargeError: larger than ``max_bytes``.
            InconsistentError: the data set disagrees with the command.
            StoreError / CatalogError: the store or the index failed; nothing was kept.
        """
        try:
            result = self._accept(data, source, sop_class_uid, sop_instance_uid, study_uid,
                                  max_bytes)
        except IngestError as exc:
            self._audit(source, f"refused: {type(exc).__name__}", sop_instance_uid)
            raise
        if result.outcome is not Outcome.STORED:  # stored: recorded with its index row
            self._audit(source, result.outcome.value, result.sop_uid,
                        InstancePath.parse(result.object_key.split(f"/{CONFLICTS}/")[0]))
        return result

    def _audit(self, source: Source, outcome: str, sop_uid: str | None,
               path: InstancePath | None = None) -> None:
        if self.audit is not None:
            self.audit.record(self._entry(source, outcome, sop_uid, path))

    @staticmethod
    def _entry(source: Source, outcome: str, sop_uid: str | None,
               path: InstancePath | None = None) -> Entry:
        return Entry("store", source.via, source.who, outcome, source.hospital,
                     path.study if path else None, path.series if path else None,
                     sop_uid.strip() if sop_uid else None, 1)

    def _accept(self, data: bytes, source: Source, sop_class_uid: str | None,
                sop_instance_uid: str | None, study_uid: str | None,
                max_bytes: int | None) -> Result:
        # hashlib lets go of the GIL: the digest of a large instance is taken on another
        # core while this thread parses it.
        digest = _HASHING.submit(_sha256, data) if len(data) >= _HASH_APART else None
        try:
            with metrics.timed(metrics.INGEST_SECONDS, "parse"):
                header = parse(data, max_bytes or self.max_bytes)
        finally:
            sha256 = digest.result() if digest is not None else _sha256(data)
        self._check(header, sop_class_uid, sop_instance_uid)
        if study_uid is not None and study_uid.strip() != header.study_uid:
            raise InconsistentError("Study Instance UID differs from the one requested")
        ds = header.dataset
        path = InstancePath(
            hospital=source.hospital,
            patient=self.patient_keys.key(source.hospital, _str(ds, "PatientID"),
                                          _str(ds, "IssuerOfPatientID")),
            study=header.study_uid,
            series=header.series_uid,
            sop=header.sop_instance_uid,
        )
        receipt = describe.Receipt(
            sha256=sha256,
            size=len(data),
            calling_ae=source.who,
            via=source.via,
            received_at=self.clock(),
        )
        with self.locks.hold(header.sop_instance_uid):
            existing = self.catalog.known_digest(header.sop_instance_uid)
            if existing is not None:
                return self._known(*existing, data, header, path, receipt)
            with metrics.timed(metrics.INGEST_SECONDS, "describe"):
                dicom = to_json(ds)
                doc = describe.build(header, path, receipt, dicom)
                rec = describe.record(dicom, path, receipt, header.transfer_syntax,
                                      header.sop_class_uid)
            try:
                inserted = self._keep(path, data, doc, rec, source)
            except CatalogError:
                self._remove(path.folder)
                raise
            except UidCollisionError as exc:
                self._remove(path.folder)
                return self._conflict(path.conflict(receipt.sha256), data, header, path,
                                      receipt, str(exc))
            if not inserted:  # another node process indexed it first: treat as known
                known = self.catalog.known_digest(header.sop_instance_uid)
                if known is not None and known[1] != path.folder:
                    self._remove(path.folder)
                if known is not None:
                    return self._known(*known, data, header, path, receipt)
        if header.derived:
            log.warning("stored %s with derived %s", path.sop, ", ".join(header.derived))
        log.info("stored %s from %s via %s", path.sop, source.who or "-", source.via)
        return Result(Outcome.STORED, path.sop, path.folder, header.derived)

    def _keep(self, path: InstancePath, data: bytes, doc: dict[str, Any],
              rec: InstanceRecord, source: Source) -> bool:
        """Writes the objects (to the store, or to the spool) and indexes the instance;
        returns what ``add_instance`` returned. Raises StoreError, CatalogError,
        UidCollisionError (the store's objects of this call are removed by the caller)."""
        audit = self._entry(source, "stored", path.sop, path)
        if self.spool is None:
            with metrics.timed(metrics.INGEST_SECONDS, "encrypt_write"):
                self._write(path.folder, data, doc)
            with metrics.timed(metrics.INGEST_SECONDS, "index"):
                return self.catalog.add_instance(rec, audit=audit)
        with metrics.timed(metrics.INGEST_SECONDS, "encrypt_write"):
            # Original first, as in the store: the uploader puts them in this order.
            blobs = {f"{path.folder}/{name}": self.fs.seal(f"{path.folder}/{name}", value)
                     for name, value in ((ORIGINAL, data), (DESCRIPTION, describe.encode(doc)))}
        started = time.perf_counter()
        try:
            with self.spool.spooled(blobs) as entries:  # appended, and durable
                metrics.INGEST_SECONDS.labels("spool").observe(time.perf_counter() - started)
                with metrics.timed(metrics.INGEST_SECONDS, "index"):
                    return self.catalog.add_instance(rec, audit=audit, spooled=entries)
        except OSError as exc:
            raise StoreError(f"could not spool {path.folder}") from exc

    def _check(self, header: Header, sop_class: str | None, sop_uid: str | None) -> None:
        if sop_uid is not None and sop_uid.strip() != header.sop_instance_uid:
            raise UidMismatchError("SOP Instance UID in the data set differs from the command's")
        if sop_class is not None and sop_class.strip() != header.sop_class_uid:
            raise InconsistentError("SOP Class UID in the data set differs from the command's")
        if not header.has_pixels and "Image Storage" in UID(header.sop_class_uid).name:
            # An image IOD's Image Pixel module is mandatory: a PACS that sent this lost data.
            raise InconsistentError("an image SOP Class without pixel data")

    def _known(self, sha256: str, object_key: str, data: bytes, header: Header,
               path: InstancePath, receipt: describe.Receipt) -> Result:
        """An instance with this SOP Instance UID is indexed (``sha256`` at ``object_key``)."""
        first = InstancePath.parse(object_key)
        if first.hospital != path.hospital:
            # Another hospital's instance: never filed beside it, never a duplicate of it
            # (the sender would lose its copy); kept apart in the sender's own hospital.
            return self._conflict(path.conflict(receipt.sha256), data, header, path,
                                  receipt, "its SOP Instance UID is another hospital's")
        if sha256 == receipt.sha256:
            log.info("duplicate %s: same bytes already stored", header.sop_instance_uid)
            return Result(Outcome.DUPLICATE, header.sop_instance_uid, object_key)
        # Keep the newcomer under the FIRST copy's folder so both are found together.
        return self._conflict(first.conflict(receipt.sha256), data, header, path, receipt,
                              "different bytes under a stored SOP Instance UID")

    def _conflict(self, folder: str, data: bytes, header: Header, path: InstancePath,
                  receipt: describe.Receipt, why: str) -> Result:
        """Keeps the instance apart in ``folder`` and records it as a conflict."""
        conflict = ConflictRecord(
            sop_uid=header.sop_instance_uid, sha256=receipt.sha256, size=receipt.size,
            object_key=folder, calling_ae=receipt.calling_ae, received_at=receipt.received_at,
        )
        if not self.fs.exists(f"{folder}/{DESCRIPTION}"):
            self._write(folder, data, describe.build(header, path, receipt))
        try:
            self.catalog.add_conflict(conflict)
        except CatalogError:
            self._remove(folder)
            raise
        log.warning("conflict %s: %s; kept apart as %s", header.sop_instance_uid, why, folder)
        return Result(Outcome.CONFLICT, header.sop_instance_uid, folder)

    def _write(self, folder: str, data: bytes, doc: dict[str, Any]) -> None:
        try:
            # Original first: a description never points at a missing original.
            self.fs.pipe_files({f"{folder}/{ORIGINAL}": data,
                                f"{folder}/{DESCRIPTION}": describe.encode(doc)},
                               record_versions=False)  # new: no older version to refuse
        except StoreError:
            self._remove(folder)
            raise
        except OSError as exc:
            self._remove(folder)
            raise StoreError(f"could not write {folder}") from exc

    def _remove(self, folder: str) -> None:
        for name in (DESCRIPTION, ORIGINAL):
            try:
                self.fs.rm_file(f"{folder}/{name}")
            except (FileNotFoundError, OSError, StoreError):
                pass  # best effort: an orphan without an index row is invisible anyway


_HASHING = ThreadPoolExecutor(2, thread_name_prefix="sha256")
_HASH_APART = 64 << 10  # smaller instances are hashed in place: a hand-off costs more


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _str(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    return None if value is None else str(value).strip() or None
