"""What a pseudonymous caller sees of an instance: the patient's pseudonym (the name of the
patient's folder in the store) in place of Patient's Name and Patient ID, and none of the
attributes that name or locate a person.

The rule is one list of tags, applied the same way to a dataset (WADO-RS instances) and to
its DICOM JSON (WADO-RS metadata), at every depth of sequences, plus every private element
(private tags may hold anything). It is the patient and people part of PS3.15's Basic
Application Level Confidentiality Profile, not the whole profile: dates, UIDs, descriptions
and pixel data are kept (a researcher needs them; text burned into pixels is not removed).
The index side (QIDO-RS) is marked per attribute in :mod:`node.index.attributes`.
"""

from __future__ import annotations

from typing import Any

from pydicom import Dataset

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020

#: Removed (tags as integers): people's names, identifiers, addresses, contacts.
REMOVED: frozenset[int] = frozenset({
    0x00080050,  # AccessionNumber
    0x00080080,  # InstitutionName
    0x00080081,  # InstitutionAddress
    0x00080090,  # ReferringPhysicianName
    0x00080092,  # ReferringPhysicianAddress
    0x00080094,  # ReferringPhysicianTelephoneNumbers
    0x00080096,  # ReferringPhysicianIdentificationSequence
    0x00081040,  # InstitutionalDepartmentName
    0x00081048,  # PhysiciansOfRecord
    0x00081050,  # PerformingPhysicianName
    0x00081060,  # NameOfPhysiciansReadingStudy
    0x00081070,  # OperatorsName
    0x00100021,  # IssuerOfPatientID
    0x00100030,  # PatientBirthDate
    0x00100032,  # PatientBirthTime
    0x00100050,  # PatientInsurancePlanCodeSequence
    0x00101000,  # OtherPatientIDs
    0x00101001,  # OtherPatientNames
    0x00101002,  # OtherPatientIDsSequence
    0x00101005,  # PatientBirthName
    0x00101040,  # PatientAddress
    0x00101060,  # PatientMotherBirthName
    0x00101080,  # MilitaryRank
    0x00101090,  # MedicalRecordLocator
    0x00102150,  # CountryOfResidence
    0x00102152,  # RegionOfResidence
    0x00102154,  # PatientTelephoneNumbers
    0x00104000,  # PatientComments
    0x00200010,  # StudyID
    0x00321032,  # RequestingPhysician
    0x00380010,  # AdmissionID
    0x00400006,  # ScheduledPerformingPhysicianName
    0x00401010,  # NamesOfIntendedRecipientsOfResults
    0x40081114,  # PhysicianApprovingInterpretation
})

#: Added to a pseudonymised dataset, as PS3.15 E.1.1 asks.
_IDENTITY_REMOVED = 0x00120062
_METHOD = 0x00120063
METHOD = "support-node: names and IDs removed, pseudonym as ID"


def pseudonymise(ds: Dataset, pseudonym: str) -> Dataset:
    """Applies the rule to ``ds`` in place (and returns it)."""
    ds.remove_private_tags()
    _strip(ds)
    ds.PatientName = pseudonym
    ds.PatientID = pseudonym
    ds.add_new(_IDENTITY_REMOVED, "CS", "YES")
    ds.add_new(_METHOD, "LO", METHOD)
    return ds


def _strip(ds: Dataset) -> None:
    for tag in [t for t in ds.keys() if int(t) in REMOVED]:
        del ds[tag]
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                item.remove_private_tags()
                _strip(item)


def pseudonymise_json(doc: dict[str, Any], pseudonym: str) -> dict[str, Any]:
    """The DICOM JSON object ``doc`` (tags as 8 hex digits) under the rule, as a new dict."""
    out = _strip_json(doc)
    for tag in (PATIENT_NAME, PATIENT_ID):
        vr = "PN" if tag == PATIENT_NAME else "LO"
        value: Any = {"Alphabetic": pseudonym} if vr == "PN" else pseudonym
        out[f"{tag:08X}"] = {"vr": vr, "Value": [value]}
    out[f"{_IDENTITY_REMOVED:08X}"] = {"vr": "CS", "Value": ["YES"]}
    out[f"{_METHOD:08X}"] = {"vr": "LO", "Value": [METHOD]}
    return dict(sorted(out.items()))


def _strip_json(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, element in doc.items():
        tag = int(key, 16)
        if tag in REMOVED or (tag >> 16) % 2 == 1:  # odd group: private
            continue
        if isinstance(element, dict) and element.get("vr") == "SQ" and element.get("Value"):
            element = {**element, "Value": [_strip_json(item) for item in element["Value"]]}
        out[key] = element
    return out


def allowed_tag(tag: int) -> bool:
    """Whether a pseudonymous caller may read the element ``tag`` (bulk data)."""
    return tag not in REMOVED and (tag >> 16) % 2 == 0 and tag not in (PATIENT_NAME,
                                                                       PATIENT_ID)
