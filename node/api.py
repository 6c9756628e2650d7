"""The Python API: the paper's general interfaces (write, read by hierarchy, encrypt, decrypt).

    from node.api import Node
    with Node.open(home="./var") as node:
        node.write(Path("ct.dcm").read_bytes())
        for record in node.ls("default"):
            data = node.read_original(record)
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from node import describe
from node.core import Core
from node.crypto import aead
from node.errors import IntegrityError, NodeError
from node.index.query import Level, Model, build, run
from node.index.records import ConflictRecord, InstanceRecord
from node.ingest import Result, Source
from node.layout import (
    CONFLICTS,
    DESCRIPTION,
    LABELS,
    ORIGINAL,
    OUTPUT,
    PREVIEW,
    QUARANTINE,
)
from node.settings import Settings, load, valid_hospital
from node.wiring import open_core

_COPY_CHUNK = 1 << 20
# kind -> (object, file suffix) for ``export`` / ``get --kind``
KINDS = {"original": (ORIGINAL, ".dcm"), "output": (OUTPUT, ".npy"),
         "preview": (PREVIEW, ".png"), "description": (DESCRIPTION, ".json"),
         "labels": (LABELS, ".labels.npy")}


@dataclass(frozen=True)
class Filters:
    """Query filters for ``ls``/``get``, matched like C-FIND (wildcards, date ranges)."""

    patient_name: str | None = None
    study_date: str | None = None
    modality: str | None = None
    accession: str | None = None

    @property
    def empty(self) -> bool:
        return not any((self.patient_name, self.study_date, self.modality, self.accession))


@dataclass(frozen=True)
class Problem:
    """An object that failed ``verify``: its key in the store and what went wrong."""

    key: str
    error: str


class Node:
    """A handle on one node's store and index (no network services)."""

    def __init__(self, core: Core) -> None:
        self.core = core

    @property
    def services(self) -> Core:
        """The core (the name older callers use)."""
        return self.core

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None,
             config: str | os.PathLike[str] | None = None, create_keys: bool = False) -> Node:
        """Opens the node configured by ``config``/environment under ``home``."""
        return cls(open_core(load(config=config, home=home), create_keys=create_keys))

    @classmethod
    def from_settings(cls, settings: Settings, create_keys: bool = False) -> Node:
        return cls(open_core(settings, create_keys=create_keys))

    def close(self) -> None:
        self.core.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None,
                                    TracebackType | None]) -> None:
        self.close()

    # -- write ---------------------------------------------------------------------------

    def write(self, data: bytes, hospital: str = "default", via: str = "api") -> Result:
        """Stores one encoded instance exactly as given (see ``Ingest.accept`` for errors).

        Raises ValueError for a hospital name the layout cannot hold (lower-case letters,
        digits, '.', '_', '-').
        """
        if not valid_hospital(hospital):
            raise ValueError(f"not a valid hospital name: {hospital!r}")
        return self.core.ingest.accept(data, Source(hospital=hospital, via=via))

    # -- read by hierarchy ---------------------------------------------------------------

    def resolve_patient(self, hospital: str | None, patient: str) -> list[str]:
        """Pseudonyms for ``patient``, given as a pseudonym or as a Patient ID."""
        catalog = self.core.catalog
        if next(catalog.instances(hospital, patient), None) is not None:
            return [patient]
        return catalog.patient_keys_for_id(hospital, patient)

    def ls(self, hospital: str | None = None, patient: str | None = None,
           study: str | None = None, series: str | None = None,
           sop: str | None = None, where: Filters | None = None,
           blank: bool | None = None) -> Iterator[InstanceRecord]:
        """Every instance below the given hierarchy prefix (trailing parts left out), and,
        with ``where``, only in the studies that the same query engine as C-FIND matches.

        ``blank``: True lists only images the filter flagged blank, False leaves them out,
        None (default) lists both. Raises QueryError (a malformed name pattern or date range).
        """
        if where is not None and not where.empty:
            yield from self._ls_where(hospital, patient, study, series, sop, where, blank)
            return
        catalog = self.core.catalog
        if patient is None:
            yield from catalog.instances(hospital, None, study, series, sop, blank)
            return
        for key in self.resolve_patient(hospital, patient):
            yield from catalog.instances(hospital, key, study, series, sop, blank)

    def _ls_where(self, hospital: str | None, patient: str | None, study: str | None,
                  series: str | None, sop: str | None, where: Filters, blank: bool | None
                  ) -> Iterator[InstanceRecord]:
        catalog = self.core.catalog
        keys = [("StudyInstanceUID", [study or ""]), ("PatientName", [where.patient_name or ""]),
                ("StudyDate", [where.study_date or ""]),
                ("AccessionNumber", [where.accession or ""]),
                ("ModalitiesInStudy", (where.modality or "").split("\\"))]
        ask = build(Level.STUDY, keys, model=Model.STUDY_ROOT)
        if hospital is not None:
            ask = ask.restricted_to([hospital])
        studies = [str(r["StudyInstanceUID"]) for r in run(catalog, ask)]
        patients = None if patient is None else set(self.resolve_patient(hospital, patient))
        for study_uid in studies:
            for rec in catalog.instances(hospital, None, study_uid, series, sop, blank):
                if patients is not None and rec.patient_key not in patients:
                    continue
                if where.modality and rec.modality != where.modality:
                    continue  # the study has that modality; list only its series of it
                yield rec

    def conflicts(self, sop_uid: str | None = None) -> list[ConflictRecord]:
        return self.core.catalog.conflicts(sop_uid)

    def open_object(self, key: str) -> IO[bytes]:
        """A decrypting, seekable reader of one object (raises IntegrityError on tamper)."""
        return self.core.fs.open(key, "rb")

    def read_original(self, record: InstanceRecord) -> bytes:
        """The original bytes exactly as received."""
        return self.core.fs.cat_file(f"{record.object_key}/{ORIGINAL}")

    def read_description(self, record: InstanceRecord) -> dict[str, Any]:
        return describe.decode(self.core.fs.cat_file(f"{record.object_key}/{DESCRIPTION}"))

    def read_output(self, record: InstanceRecord) -> np.ndarray:
        """The preprocessed image, (frames, rows, cols) in [0, 1] (float16 by default).

        Raises FileNotFoundError when the instance has not been processed (see its state).
        """
        data = self.core.fs.cat_file(f"{record.object_key}/{OUTPUT}")
        return np.load(io.BytesIO(data), allow_pickle=False)

    def export(self, record: InstanceRecord, out_dir: Path, kind: str = "original") -> Path:
        """Decrypts one of the instance's objects, streaming, to
        ``out_dir/hospital/patient/study/series/{sop}{suffix}`` (``KINDS`` gives the object
        and suffix of each kind: original .dcm, output .npy, preview .png, description .json,
        labels .labels.npy).

        The file appears whole or not at all (written to a temporary name, then renamed).
        Raises ValueError for an unknown kind, FileNotFoundError when the instance has no
        such object (not processed), IntegrityError (and leaves no file) if the stored
        object was tampered with.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
        name, suffix = KINDS[kind]
        target = self._export_path(record, out_dir, f"{record.sop_uid}{suffix}")
        self._decrypt_to(f"{record.object_key}/{name}", target)
        return target

    def export_predictions(self, record: InstanceRecord, out_dir: Path,
                           name: str | None = None) -> list[Path]:
        """Decrypts the label maps library models predicted for the instance (``name``:
        only that object, see ``node.layout.prediction_name``) beside where ``export``
        writes, as ``{sop}.prediction-{arch}-{version}.npy``. Returns the files written
        (none: the instance has no such prediction). Raises IntegrityError."""
        folder = record.object_key
        names = [name] if name else sorted(
            key.rsplit("/", 1)[1] for key in self.core.fs.find(folder)
            if key.count("/") == folder.count("/") + 1
            and key.rsplit("/", 1)[1].startswith("prediction-"))
        paths = []
        for found in names:
            target = self._export_path(record, out_dir, f"{record.sop_uid}.{found}")
            try:
                self._decrypt_to(f"{folder}/{found}", target)
            except FileNotFoundError:
                continue
            paths.append(target)
        return paths

    def export_conflicts(self, record: InstanceRecord, out_dir: Path) -> list[Path]:
        """Decrypts the copies kept as conflicts of ``record`` beside its export.

        Each is written as ``{sop}.conflict-{sha256[:12]}.dcm`` in the folder ``export``
        writes ``{sop}.dcm`` to. Returns the files written, oldest conflict first.
        """
        paths = []
        for conflict in self.conflicts(record.sop_uid):
            name = f"{record.sop_uid}.conflict-{conflict.sha256[:12]}.dcm"
            target = self._export_path(record, out_dir, name)
            self._decrypt_to(f"{conflict.object_key}/{ORIGINAL}", target)
            paths.append(target)
        return paths

    @staticmethod
    def _export_path(record: InstanceRecord, out_dir: Path, name: str) -> Path:
        return out_dir.joinpath(*record.object_key.split("/")[:-1], name)

    def _decrypt_to(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        try:
            with self.open_object(key) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, _COPY_CHUNK)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    # -- encrypt / decrypt ---------------------------------------------------------------

    def encrypt(self, data: bytes, path: str) -> bytes:
        """Encrypts ``data`` as the object at ``path`` would be (active key, path bound in)."""
        return aead.encrypt(data, self.core.keyring.active, path,
                            self.core.settings.store.chunk_size)

    def decrypt(self, blob: bytes, path: str) -> bytes:
        """Decrypts an object's raw bytes; IntegrityError if it was not made for ``path``."""
        return aead.decrypt(blob, self.core.keyring, path)

    # -- maintenance ---------------------------------------------------------------------

    def objects(self) -> list[str]:
        """Every object key in the store, but those set aside under ``_quarantine/`` (which
        decrypt only under their original path: see ``node.consistency``)."""
        return sorted(k for k in self.core.fs.find("") if not k.startswith(QUARANTINE + "/"))

    def verify_object(self, key: str) -> Problem | None:
        """Decrypts one object fully; for originals, also checks the sha256 in its description."""
        fs = self.core.fs
        try:
            digest = hashlib.sha256()
            with fs.open(key, "rb") as fh:
                while chunk := fh.read(_COPY_CHUNK):
                    digest.update(chunk)
            if key.endswith("/" + ORIGINAL):
                folder = key[: -len(ORIGINAL) - 1]
                doc = describe.decode(fs.cat_file(f"{folder}/{DESCRIPTION}"))
                if doc["original"]["sha256"] != digest.hexdigest():
                    return Problem(key, "sha256 differs from the description")
        except IntegrityError as exc:
            return Problem(key, f"integrity: {exc}")
        except FileNotFoundError:
            return Problem(key, "missing description" if key.endswith(ORIGINAL) else "missing")
        except (NodeError, ValueError, KeyError, OSError) as exc:
            return Problem(key, f"{type(exc).__name__}: {exc}")
        return None

    def reindex_entry(self, key: str) -> str:
        """Indexes one stored description. Returns 'instance', 'conflict' or 'skipped'."""
        doc = describe.decode(self.core.fs.cat_file(key))
        folder = key[: -len(DESCRIPTION) - 1]
        catalog = self.core.catalog
        if f"/{CONFLICTS}/" in key:
            return "conflict" if catalog.add_conflict(describe.conflict_from(doc, folder)) \
                else "skipped"
        return "instance" if catalog.add_instance(describe.record_from(doc)) else "skipped"

    def descriptions(self) -> list[str]:
        """Every description object key, in the order to reindex them.

        Instances come before their conflicts, and each in the order they were received:
        the index keeps patient, study and series attributes from the first instance that
        named them, so only that order rebuilds the listing ingest made. (This reads every
        description; one that cannot be read goes last, for ``reindex_entry`` to report.)
        """
        keys = [k for k in self.objects() if k.endswith("/" + DESCRIPTION)]
        received = {k: self._received_at(k) for k in keys}
        return sorted(keys, key=lambda k: (f"/{CONFLICTS}/" in k, received[k], k))

    def _received_at(self, key: str) -> datetime:
        try:
            doc = describe.decode(self.core.fs.cat_file(key))
            return describe.receipt_of(doc).received_at.astimezone(UTC)
        except (NodeError, ValueError, KeyError, TypeError, OSError):
            return datetime.max.replace(tzinfo=UTC)
