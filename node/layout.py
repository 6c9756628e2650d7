"""The storage layout: the paper's hierarchy, keyed by UIDs, with no PHI in any name.

    {hospital}/{patient}/{study_uid}/{series_uid}/{sop_uid}/original.dcm
                                                           /description.json
    {hospital}/{patient}/{study_uid}/{series_uid}/{sop_uid}/conflicts/{sha256}/...

``patient`` is a keyed pseudonym (HMAC-SHA256 of PatientID and IssuerOfPatientID under
the keyring's pseudonym key), because object names are not encrypted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

ORIGINAL = "original.dcm"
DESCRIPTION = "description.json"
CONFLICTS = "conflicts"
LEVELS = ("hospital", "patient", "study", "series", "sop")
_PART = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,63}")


class Pseudonymiser(Protocol):
    def pseudonym(self, *parts: str) -> str: ...


def patient_key(keys: Pseudonymiser, patient_id: str | None, issuer: str | None) -> str:
    """The patient's folder name: stable for the same ID and issuer, meaningless without the key."""
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

    def conflict(self, sha256: str) -> str:
        """The folder that keeps a different instance that arrived under the same UID."""
        return f"{self.folder}/{CONFLICTS}/{sha256}"

    @classmethod
    def parse(cls, folder: str) -> InstancePath:
        """The inverse of ``folder``; ValueError for anything else."""
        parts = folder.strip("/").split("/")
        if len(parts) != 5 or not all(_PART.fullmatch(p) for p in parts):
            raise ValueError(f"not an instance folder: {folder}")
        return cls(*parts)


def prefix(*parts: str | None) -> str:
    """The batch-read prefix of the first given parts (trailing ``None``s left out).

    Raises ValueError on a part that is not a safe path component or on a gap.
    """
    given = list(parts)
    while given and given[-1] is None:
        given.pop()
    if any(p is None for p in given):
        raise ValueError("a hierarchy level was skipped")
    for p in given:
        assert p is not None
        if not _PART.fullmatch(p):
            raise ValueError("not a valid hierarchy part (letters, digits, . _ - only)")
    return "/".join(p for p in given if p is not None)
