"""The storage layout: the paper's hierarchy, keyed by UIDs, with no PHI in any name.

    {hospital}/{patient}/{study_uid}/{series_uid}/{sop_uid}/original.dcm
                                                           /description.json
                                                           /output.npy, preview.png
    {hospital}/{patient}/{study_uid}/{series_uid}/{sop_uid}/conflicts/{sha256}/...
    _state/blank-filter/{version}.npz
    _quarantine/{any of the above}     set aside by `verify --repair`, bytes unchanged

``patient`` is a keyed pseudonym (HMAC-SHA256 of PatientID and IssuerOfPatientID under
the keyring's pseudonym key), because object names are not encrypted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

ORIGINAL = "original.dcm"
DESCRIPTION = "description.json"
OUTPUT = "output.npy"  # the preprocessed image: (frames, size, size), float16 by default
PREVIEW = "preview.png"  # an 8-bit preview of the first frame, for people
PREDICTION = "prediction-{arch}-{version}.npy"  # a library model's label map of the image
LABELS = "labels.npy"  # a label map (frames, rows, cols) uint8 at the original's size
CONFLICTS = "conflicts"
STATE = "_state"  # {STATE}/{name}/{version}: versioned shared state (the filter's model)
# {QUARANTINE}/{original path}: objects `verify --repair` set aside, bytes unchanged (so still
# bound to, and decryptable only with, the original path).
QUARANTINE = "_quarantine"
# A safe object-name part: what UIDs (PS3.5 9.1: digits and dots, plus real-world letters)
# and pseudonyms look like; never a slash or a leading dot.
PART = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,63}")


class Pseudonymiser(Protocol):
    def pseudonym(self, *parts: str) -> str: ...


def patient_key(keys: Pseudonymiser, hospital: str, patient_id: str | None,
                issuer: str | None) -> str:
    """The patient's folder name: stable for the same hospital, ID and issuer, meaningless
    without the key, and different in each hospital (one person's folders in two
    hospitals cannot be linked by their names)."""
    return keys.pseudonym(hospital, issuer or "", patient_id or "")


def legacy_patient_key(keys: Pseudonymiser, patient_id: str | None, issuer: str | None) -> str:
    """The folder name before it included the hospital (kept for patients stored then)."""
    return keys.pseudonym(issuer or "", patient_id or "")


@dataclass(frozen=True)
class InstancePath:
    """Where one instance lives."""

    hospital: str
    patient: str
    study: str
    series: str
    sop: str

    @property
    def folder(self) -> str:
        return "/".join((self.hospital, self.patient, self.study, self.series, self.sop))

    @property
    def original(self) -> str:
        return f"{self.folder}/{ORIGINAL}"

    @property
    def description(self) -> str:
        return f"{self.folder}/{DESCRIPTION}"

    @property
    def output(self) -> str:
        return f"{self.folder}/{OUTPUT}"

    @property
    def preview(self) -> str:
        return f"{self.folder}/{PREVIEW}"

    def conflict(self, sha256: str) -> str:
        """The folder that keeps a different instance that arrived under the same UID."""
        return f"{self.folder}/{CONFLICTS}/{sha256}"

    @classmethod
    def parse(cls, folder: str) -> InstancePath:
        """The inverse of ``folder``; ValueError for anything else."""
        parts = folder.strip("/").split("/")
        if len(parts) != 5 or not all(PART.fullmatch(p) for p in parts):
            raise ValueError(f"not an instance folder: {folder}")
        return cls(*parts)


def prediction_name(model: str) -> str:
    """The object name of library model ``arch/version``'s label map of an image."""
    arch, _, version = model.partition("/")
    return PREDICTION.format(arch=arch, version=version)


def prediction_model(name: str) -> str | None:
    """The model id (``arch/version``) whose label map ``name`` is, or None for another
    object."""
    head, tail = PREDICTION.split("{arch}-{version}")
    if not (name.startswith(head) and name.endswith(tail)):
        return None
    arch, _, version = name[len(head):-len(tail)].rpartition("-")
    return f"{arch}/{version}" if arch and version else None


def is_rewritten(path: str) -> bool:
    """Whether the object at ``path`` may be written again in place (a description, an
    output, a preview, a label map, a prediction), so that its versions are tracked
    (node.index.object_versions). Originals are written once."""
    name = path.rsplit("/", 1)[-1]
    return name in (DESCRIPTION, OUTPUT, PREVIEW, LABELS) or prediction_model(name) is not None


def is_spoolable(path: str) -> bool:
    """Whether the object at ``path`` may wait in the local spool (node.store.spool): an
    instance's original and description, as ingest writes them; nothing else is spooled,
    so reads of other objects never ask the spool."""
    name = path.rsplit("/", 1)[-1]
    return name in (ORIGINAL, DESCRIPTION) and f"/{CONFLICTS}/" not in f"/{path}"
