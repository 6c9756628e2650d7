"""Which folder name (pseudonym) a patient's instances are filed under.

Since the review's finding that one pseudonym per (issuer, Patient ID) let a patient's
folders be linked across hospitals, the pseudonym includes the hospital
(:func:`node.layout.patient_key`). An index created before that keeps its patients' old
folder names, so their later instances join them instead of starting a second folder: on
such an index (marked by the ``pseudonym-scheme`` state being below 2), a patient that is
not yet known under its new name is looked up under the old one, once per process and
patient. A new index is marked scheme 2 when its first patient arrives, and never looks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy import exists, select

from node.index import schema as s
from node.index import versions
from node.index.transactions import Transactions
from node.layout import Pseudonymiser, legacy_patient_key, patient_key

SCHEME = "pseudonym-scheme"
_CACHE = 4096


class PatientKeys:
    def __init__(self, keys: Pseudonymiser, index: Transactions) -> None:
        self.keys = keys
        self.index = index
        self._legacy: bool | None = None
        self._known: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, hospital: str, patient_id: str | None, issuer: str | None) -> str:
        new = patient_key(self.keys, hospital, patient_id, issuer)
        if not self._legacy_index():
            return new
        ident = (hospital, issuer or "", patient_id or "")
        with self._lock:
            found = self._known.get(ident)
        if found is None:
            old = legacy_patient_key(self.keys, patient_id, issuer)
            found = old if (not self._exists(hospital, new)
                            and self._exists(hospital, old)) else new
            with self._lock:
                self._known[ident] = found
                while len(self._known) > _CACHE:
                    self._known.popitem(last=False)
        return found

    def _legacy_index(self) -> bool:
        if self._legacy is None:
            if versions.current(self.index, SCHEME) >= 2:
                self._legacy = False
            elif not self.index.reading("looking for patients",
                                        lambda conn: conn.scalar(select(exists(s.patients)))):
                versions.advance(self.index, SCHEME, 0, 2)  # False: another process did
                self._legacy = False
            else:
                self._legacy = True
        return self._legacy

    def _exists(self, hospital: str, key: str) -> bool:
        stmt = select(exists().where(s.patients.c.hospital == hospital,
                                     s.patients.c.patient_key == key))
        return bool(self.index.reading("looking up a patient",
                                       lambda conn: conn.scalar(stmt)))
