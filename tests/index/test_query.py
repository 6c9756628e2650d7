"""The query engine on SQLite and on a real PostgreSQL: every test runs on both.

The index is built once per dialect (the queries only read it), through Catalog.add_instance.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from node.dimse.identifier import find as run
from node.dimse.identifier import identifier, model_for_sop_class, parse_identifier
from node.dimse.status import qr_status_for
from node.errors import NodeError
from node.index import Catalog, InstanceRecord
from node.index.query import (
    InstanceRef,
    Level,
    MatchKind,
    Model,
    QueryError,
    count_instances,
    instances_for,
)

IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000

# The tests hand pydicom malformed values on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

RECEIVED = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
PATIENT, STUDY = Model.PATIENT_ROOT, Model.STUDY_ROOT

# patient key -> (hospital, Patient ID, name, birth date, sex)
PATIENTS = {
    "P1": ("H1", "PID1", "Doe^Jane", "19700101", "F"),
    "P2": ("H1", "PID2", "DOE^JOHN", "19650505", "M"),
    "P3": ("H1", "PID_3", "Smith_Jones^Ann", None, "F"),
    "P4": ("H2", "PIDX3", "SmithXJones^Bob", None, "M"),
    "P5": ("H1", "PID%5", "Müller^Jürgen", "19800229", "M"),
}
# study n -> (patient key, date, time, accession, description)
STUDIES = {
    1: ("P1", "20240115", "101500", "ACC%100", "CT Thorax"),
    2: ("P1", "20240220", "083000", "ACCX100", "MR Brain"),
    3: ("P2", "20240131", "235959", "acc_7", "ct abdomen"),
    4: ("P3", "20231231", "120000", "ACCX7", "A!B[1]"),
    5: ("P4", None, None, None, None),
    6: ("P5", "20240201", "0700", "ACC6", "CT Knee"),
}
# (study n, series m, modality, number of instances)
SERIES = [
    (1, 1, "CT", 3),
    (1, 2, "PR", 1),
    (2, 1, "MR", 2),
    (3, 1, "CT", 1),
    (3, 2, "SEG", 1),
    (4, 1, "US", 1),
    (5, 1, "OT", 1),
    (6, 1, "CT", 1),
]


def _records() -> Iterator[InstanceRecord]:
    for n, m, modality, count in SERIES:
        key, date, time, accession, description = STUDIES[n]
        hospital, pid, name, birth, sex = PATIENTS[key]
        for k in range(1, count + 1):
            sop = f"1.2.3.{n}.{m}.{k}"
            yield InstanceRecord(
                hospital=hospital,
                patient_key=key,
                study_uid=f"1.2.3.{n}",
                series_uid=f"1.2.3.{n}.{m}",
                sop_uid=sop,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                object_key=f"{hospital}/{key}/1.2.3.{n}/1.2.3.{n}.{m}/{sop}",
                sha256=f"{n}{m}{k}".rjust(64, "0"),
                size=1000,
                calling_ae="MODALITY",
                received_at=RECEIVED,
                patient_id=pid,
                patient_name=name,
                patient_birth_date=birth,
                patient_sex=sex,
                study_date=date,
                study_time=time,
                accession_number=accession,
                study_id=str(n),
                study_description=description,
                referring_physician_name="Who^Doctor",
                modality=modality,
                series_number=m,
                series_description=f"{modality} series",
                instance_number=k,
                rows=512,
                columns=256,
            )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Catalog]:
    """The fixture index, built once per dialect."""
    if request.param == "sqlite":
        cat = Catalog(f"sqlite:///{tmp_path_factory.mktemp('query') / 'index.db'}")
        _fill(cat)
        yield cat
        cat.close()
        return
    server = request.getfixturevalue("postgres_server")
    with server.database() as url:
        cat = Catalog(url)
        _fill(cat)
        yield cat
        cat.close()


def _fill(cat: Catalog) -> None:
    for rec in _records():
        assert cat.add_instance(rec)


def find(cat: Catalog, model: Model, level: str, **keys: Any) -> list[Dataset]:
    return list(run(cat, parse_identifier(identifier(level, **keys), model)))


def values(responses: list[Dataset], keyword: str) -> list[Any]:
    """Returns the sorted values of one attribute across responses (as text)."""
    return sorted(str(r.get(keyword, "")) for r in responses)


def studies(cat: Catalog, **keys: Any) -> list[str]:
    """Returns the sorted Study Instance UIDs that a Study Root study query finds."""
    keys.setdefault("StudyInstanceUID", "")
    return values(find(cat, STUDY, "STUDY", **keys), "StudyInstanceUID")


def refused(ds: Dataset, model: Model, status: int, **kwargs: Any) -> QueryError:
    with pytest.raises(QueryError) as info:
        parse_identifier(ds, model, **kwargs)
    assert qr_status_for(info.value, retrieve=False) == status
    assert isinstance(info.value, NodeError)
    return info.value


# ---- patient level (Patient Root) -----------------------------------------------------------


def test_patient_level_universal_with_counts(catalog: Catalog) -> None:
    found = find(
        catalog,
        PATIENT,
        "PATIENT",
        PatientID="",
        PatientName="",
        PatientBirthDate="",
        NumberOfPatientRelatedStudies=None,
        NumberOfPatientRelatedSeries=None,
        NumberOfPatientRelatedInstances=None,
    )

    assert values(found, "PatientID") == sorted(p[1] for p in PATIENTS.values())
    jane = next(r for r in found if r.PatientID == "PID1")
    assert jane.QueryRetrieveLevel == "PATIENT"
    assert jane.SpecificCharacterSet == "ISO_IR 192"
    assert jane.PatientName == "Doe^Jane"
    assert jane.PatientBirthDate == "19700101"
    counts = (
        jane.NumberOfPatientRelatedStudies,
        jane.NumberOfPatientRelatedSeries,
        jane.NumberOfPatientRelatedInstances,
    )
    assert counts == (2, 3, 6)
    no_birth_date = next(r for r in found if r.PatientID == "PID_3")
    assert no_birth_date["PatientBirthDate"].is_empty  # asked for, not in the index
    assert "StudyInstanceUID" not in jane  # only the keys asked for, and the unique key


def test_patient_level_single_value_and_unicode(catalog: Catalog) -> None:
    found = find(catalog, PATIENT, "PATIENT", PatientID="PID%5", PatientName="")
    assert [str(r.PatientName) for r in found] == ["Müller^Jürgen"]
    assert values(find(catalog, PATIENT, "PATIENT", PatientName="Müller*"), "PatientID") == [
        "PID%5"
    ]
    assert find(catalog, PATIENT, "PATIENT", PatientID="pid1") == []  # LO: case-sensitive


def test_pn_matching_ignores_case_and_trailing_carets(catalog: Catalog) -> None:
    def ids(name: str) -> list[str]:
        return values(find(catalog, PATIENT, "PATIENT", PatientName=name), "PatientID")

    assert ids("doe^jane") == ["PID1"]
    assert ids("DOE^JANE^^") == ["PID1"]
    assert ids("Doe*") == ["PID1", "PID2"]
    assert ids("d?e^j*") == ["PID1", "PID2"]
    assert ids("Doe") == []  # single value matching is whole-value, not a prefix
    assert ids("doe^jane\\nobody") == ["PID1"]  # any of several values
    assert ids("doe^jane\\Müller^*") == ["PID%5", "PID1"]


def test_wildcards_do_not_treat_sql_characters_as_wildcards(catalog: Catalog) -> None:
    def ids(**keys: Any) -> list[str]:
        return values(find(catalog, PATIENT, "PATIENT", **keys), "PatientID")

    # "_" and "%" in the value are literal; only * and ? are wildcards.
    assert ids(PatientName="Smith_J*") == ["PID_3"]
    assert ids(PatientName="Smith?J*") == sorted(["PID_3", "PIDX3"])
    assert ids(PatientID="PID_*") == ["PID_3"]
    assert ids(PatientID="PID%*") == ["PID%5"]
    assert ids(PatientID="PID?") == ["PID1", "PID2"]
    assert ids(PatientID="PID?3") == sorted(["PID_3", "PIDX3"])


# ---- study level ----------------------------------------------------------------------------


def test_study_level_text_matching_is_case_sensitive(catalog: Catalog) -> None:
    assert studies(catalog, AccessionNumber="acc_7") == ["1.2.3.3"]
    assert studies(catalog, AccessionNumber="ACC_7") == []
    assert studies(catalog, AccessionNumber="acc*") == ["1.2.3.3"]
    assert studies(catalog, AccessionNumber="ACC%*") == ["1.2.3.1"]
    assert studies(catalog, AccessionNumber="ACC?100") == ["1.2.3.1", "1.2.3.2"]
    assert studies(catalog, AccessionNumber="ACC?7") == ["1.2.3.4"]
    assert studies(catalog, StudyDescription="A!B[*") == ["1.2.3.4"]  # escape char, bracket
    assert studies(catalog, StudyDescription="*Thorax") == ["1.2.3.1"]
    assert studies(catalog, StudyDescription="ct*") == ["1.2.3.3"]
    everything = [f"1.2.3.{n}" for n in STUDIES]
    assert studies(catalog, AccessionNumber="*") == everything  # incl. the empty one
    assert studies(catalog, AccessionNumber="") == everything


def test_study_date_ranges(catalog: Catalog) -> None:
    assert studies(catalog, StudyDate="20240101-20240131") == ["1.2.3.1", "1.2.3.3"]
    assert studies(catalog, StudyDate="-20231231") == ["1.2.3.4"]
    assert studies(catalog, StudyDate="20240201-") == ["1.2.3.2", "1.2.3.6"]
    assert studies(catalog, StudyDate="20240115") == ["1.2.3.1"]
    # The study without a date matches universal matching only.
    assert "1.2.3.5" not in studies(catalog, StudyDate="19000101-29991231")
    assert studies(catalog, PatientBirthDate="-19691231") == ["1.2.3.3"]


def test_study_time_ranges_and_partial_bounds(catalog: Catalog) -> None:
    assert studies(catalog, StudyTime="0800-0900") == ["1.2.3.2"]
    assert studies(catalog, StudyTime="-07") == ["1.2.3.6"]  # "07" covers 07:00-07:59
    assert studies(catalog, StudyTime="2359-") == ["1.2.3.3"]


def test_combined_date_and_time_range(catalog: Catalog) -> None:
    # One range from 15 Jan 09:00 to 20 Feb 11:00, not times 09-11 on each day.
    found = studies(catalog, StudyDate="20240115-20240220", StudyTime="0900-1100")
    assert found == ["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.6"]
    # A single date with a time range: that day, those times.
    assert studies(catalog, StudyDate="20240115", StudyTime="1000-1100") == ["1.2.3.1"]
    assert studies(catalog, StudyDate="20240115", StudyTime="1100-") == []
    # Open date end: from 31 Jan 23:00 on.
    assert studies(catalog, StudyDate="20240131-", StudyTime="2300-") == [
        "1.2.3.2",
        "1.2.3.3",
        "1.2.3.6",
    ]


def test_uid_list_and_single(catalog: Catalog) -> None:
    assert studies(catalog, StudyInstanceUID="1.2.3.1\\1.2.3.3\\9.9") == ["1.2.3.1", "1.2.3.3"]
    assert studies(catalog, StudyInstanceUID=["1.2.3.2", "1.2.3.6"]) == ["1.2.3.2", "1.2.3.6"]
    assert find(catalog, STUDY, "STUDY", StudyInstanceUID="1.2.3.4")[0].StudyInstanceUID == (
        "1.2.3.4"
    )
    assert studies(catalog, StudyInstanceUID="*") == [f"1.2.3.{n}" for n in STUDIES]
    refused(identifier("STUDY", StudyInstanceUID="1.2.3.*"), STUDY, UNABLE_TO_PROCESS)


def test_modalities_in_study_and_study_counts(catalog: Catalog) -> None:
    assert studies(catalog, ModalitiesInStudy="CT") == ["1.2.3.1", "1.2.3.3", "1.2.3.6"]
    assert studies(catalog, ModalitiesInStudy="MR\\SEG") == ["1.2.3.2", "1.2.3.3"]  # any of
    assert studies(catalog, ModalitiesInStudy="S*") == ["1.2.3.3"]
    assert studies(catalog, ModalitiesInStudy="XA") == []

    (thorax,) = find(
        catalog,
        STUDY,
        "STUDY",
        StudyInstanceUID="1.2.3.1",
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries=None,
        NumberOfStudyRelatedInstances=None,
        NumberOfPatientRelatedStudies=None,
    )
    assert list(thorax.ModalitiesInStudy) == ["CT", "PR"]
    assert (thorax.NumberOfStudyRelatedSeries, thorax.NumberOfStudyRelatedInstances) == (2, 4)
    assert thorax.NumberOfPatientRelatedStudies == 2  # not correlated to this study alone


def test_return_keys_empty_and_filled(catalog: Catalog) -> None:
    ds = identifier(
        "STUDY",
        StudyInstanceUID="1.2.3.5\\1.2.3.1",
        StudyDate="",
        StudyDescription="",
        PatientName="",
        ReferringPhysicianName="",
        PatientAge="",  # not in the index: returned empty
        InstitutionName="Somewhere",  # not supported: ignored as a matching key
        RetrieveAETitle="",
        InstanceAvailability="",
        Modality="CT",  # a series key at the study level: ignored
    )
    ds.ProcedureCodeSequence = Sequence([Dataset()])  # return key, no matching
    ds.add(DataElement(0x00091010, "LO", ""))  # private: returned empty
    query = parse_identifier(ds, STUDY)
    assert set(query.ignored) == {"InstitutionName", "Modality"}

    found = {str(r.StudyInstanceUID): r for r in run(catalog, query)}

    assert set(found) == {"1.2.3.1", "1.2.3.5"}
    full, empty = found["1.2.3.1"], found["1.2.3.5"]
    assert (full.StudyDate, full.StudyDescription) == ("20240115", "CT Thorax")
    assert full.ReferringPhysicianName == "Who^Doctor"
    assert empty["StudyDate"].is_empty and empty["StudyDescription"].is_empty
    assert str(empty.PatientName) == "SmithXJones^Bob"
    for r in found.values():
        for keyword in ("PatientAge", "InstitutionName", "RetrieveAETitle", "Modality"):
            assert r[keyword].is_empty, keyword
        assert r.InstanceAvailability == "ONLINE"
        assert r.ProcedureCodeSequence == Sequence()
        assert r[0x00091010].is_empty
        assert r.QueryRetrieveLevel == "STUDY"


def test_hospital_restriction(catalog: Catalog) -> None:
    query = parse_identifier(identifier("STUDY", StudyInstanceUID=""), STUDY)
    only_h2 = list(run(catalog, query.restricted_to({"H2"})))
    assert values(only_h2, "StudyInstanceUID") == ["1.2.3.5"]


# ---- series and image levels ----------------------------------------------------------------


def test_series_level_study_root(catalog: Catalog) -> None:
    found = find(
        catalog,
        STUDY,
        "SERIES",
        StudyInstanceUID="1.2.3.1",
        Modality="",
        SeriesNumber=None,
        NumberOfSeriesRelatedInstances=None,
    )
    by_uid = {str(r.SeriesInstanceUID): r for r in found}
    assert set(by_uid) == {"1.2.3.1.1", "1.2.3.1.2"}
    ct = by_uid["1.2.3.1.1"]
    assert (ct.Modality, ct.SeriesNumber, ct.NumberOfSeriesRelatedInstances) == ("CT", 1, 3)
    assert ct.StudyInstanceUID == "1.2.3.1"  # unique key above, always returned

    pr = find(catalog, STUDY, "SERIES", StudyInstanceUID="1.2.3.1", Modality="PR")
    assert values(pr, "SeriesInstanceUID") == ["1.2.3.1.2"]
    second = find(catalog, STUDY, "SERIES", StudyInstanceUID="1.2.3.3", SeriesNumber="2")
    assert values(second, "SeriesInstanceUID") == ["1.2.3.3.2"]
    # Keys of the study level still match at the series level.
    same_day = find(catalog, STUDY, "SERIES", StudyInstanceUID="1.2.3.1", StudyDate="20240115")
    assert len(same_day) == 2
    assert find(catalog, STUDY, "SERIES", StudyInstanceUID="1.2.3.1", StudyDate="20240116") == []


def test_series_level_needs_the_study_uid(catalog: Catalog) -> None:
    refused(identifier("SERIES", Modality="CT"), STUDY, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
    refused(
        identifier("SERIES", StudyInstanceUID="1.2.3.1\\1.2.3.2"),
        STUDY,
        IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    )
    refused(identifier("SERIES", StudyInstanceUID="*"), STUDY, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)


def test_image_level(catalog: Catalog) -> None:
    keys = {"StudyInstanceUID": "1.2.3.1", "SeriesInstanceUID": "1.2.3.1.1"}
    found = find(
        catalog, STUDY, "IMAGE", SOPInstanceUID="", SOPClassUID="", InstanceNumber=None,
        Rows=None, **keys,
    )
    assert values(found, "SOPInstanceUID") == ["1.2.3.1.1.1", "1.2.3.1.1.2", "1.2.3.1.1.3"]
    first = next(r for r in found if r.InstanceNumber == 1)
    assert (first.SOPClassUID, first.Rows) == ("1.2.840.10008.5.1.4.1.1.2", 512)
    assert first.SeriesInstanceUID == "1.2.3.1.1" and first.StudyInstanceUID == "1.2.3.1"

    two = find(catalog, STUDY, "IMAGE", InstanceNumber="2", **keys)
    assert values(two, "SOPInstanceUID") == ["1.2.3.1.1.2"]
    listed = find(catalog, STUDY, "IMAGE", SOPInstanceUID="1.2.3.1.1.1\\1.2.3.1.1.3", **keys)
    assert values(listed, "SOPInstanceUID") == ["1.2.3.1.1.1", "1.2.3.1.1.3"]
    # The series UID of another study: nothing (the study UID is matched too).
    assert find(catalog, STUDY, "IMAGE", StudyInstanceUID="1.2.3.2",
                SeriesInstanceUID="1.2.3.1.1") == []


def test_image_level_needs_the_series_uid(catalog: Catalog) -> None:
    refused(
        identifier("IMAGE", StudyInstanceUID="1.2.3.1", SOPInstanceUID=""),
        STUDY,
        IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    )
    refused(
        identifier("IMAGE", StudyInstanceUID="1.2.3.1", SeriesInstanceUID="", PatientID="PID1"),
        PATIENT,
        IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    )


# ---- Patient Root below the patient level ---------------------------------------------------


def test_patient_root_hierarchy(catalog: Catalog) -> None:
    found = find(catalog, PATIENT, "STUDY", PatientID="PID1", StudyInstanceUID="")
    assert values(found, "StudyInstanceUID") == ["1.2.3.1", "1.2.3.2"]
    assert all(r.PatientID == "PID1" for r in found)  # unique key above, returned

    series = find(catalog, PATIENT, "SERIES", PatientID="PID1", StudyInstanceUID="1.2.3.1")
    assert values(series, "SeriesInstanceUID") == ["1.2.3.1.1", "1.2.3.1.2"]
    # The study exists but belongs to another patient.
    assert find(catalog, PATIENT, "SERIES", PatientID="PID2", StudyInstanceUID="1.2.3.1") == []

    images = find(
        catalog,
        PATIENT,
        "IMAGE",
        PatientID="PID2",
        StudyInstanceUID="1.2.3.3",
        SeriesInstanceUID="1.2.3.3.2",
    )
    assert values(images, "SOPInstanceUID") == ["1.2.3.3.2.1"]


def test_patient_root_needs_the_patient_id(catalog: Catalog) -> None:
    error = refused(
        identifier("STUDY", StudyInstanceUID=""), PATIENT, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    )
    assert "PatientID" in str(error)
    refused(
        identifier("STUDY", PatientID="PID*"), PATIENT, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    )
    refused(
        identifier("SERIES", PatientID="PID1", SeriesInstanceUID=""),
        PATIENT,
        IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    )


# ---- refusals -------------------------------------------------------------------------------


def test_levels_the_model_lacks_or_malformed_levels() -> None:
    refused(identifier("PATIENT", PatientID=""), STUDY, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
    no_level = Dataset()
    no_level.PatientID = ""
    refused(no_level, PATIENT, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
    bad = Dataset()
    bad.QueryRetrieveLevel = "FRAME"
    refused(bad, STUDY, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)


@pytest.mark.parametrize(
    "keys",
    [
        {"StudyDate": "2024-01"},
        {"StudyDate": "20240101-20240131-20240201"},
        {"StudyDate": "2024*"},
        {"StudyDate": "-"},
        {"StudyDate": "20240230"},
        {"StudyTime": "25"},
        {"StudyTime": "10:15"},
        {"StudyInstanceUID": "1.2.?"},
        {"PatientBirthDate": "19700101\\19800101"},
    ],
)
def test_malformed_values_are_unable_to_process(keys: dict[str, str]) -> None:
    refused(identifier("STUDY", **keys), STUDY, UNABLE_TO_PROCESS)


@pytest.mark.parametrize("number", ["1?", "one", "1\\2"])
def test_malformed_numbers_are_unable_to_process(number: str) -> None:
    ds = identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3")
    # As read from the network: raw bytes, converted (or not) when the engine reads them.
    raw = number.encode()
    ds[0x00200013] = RawDataElement(Tag(0x00200013), "IS", len(raw), raw, 0, True, True)
    refused(ds, STUDY, UNABLE_TO_PROCESS)


def test_sequence_matching_is_refused_but_empty_sequences_are_return_keys() -> None:
    item = Dataset()
    item.CodeValue = "X1"
    ds = identifier("STUDY")
    ds.ProcedureCodeSequence = Sequence([item])
    error = refused(ds, STUDY, UNABLE_TO_PROCESS)
    assert "sequence" in str(error)

    empty_item = Dataset()
    empty_item.CodeValue = ""
    ds.ProcedureCodeSequence = Sequence([empty_item])
    assert parse_identifier(ds, STUDY).conditions == ()


def test_parsed_conditions() -> None:
    query = parse_identifier(
        identifier(
            "STUDY",
            PatientName="Doe*",
            StudyDate="20240101-",
            StudyInstanceUID="1\\2",
            AccessionNumber="A1",
            StudyDescription="*",  # universal
        ),
        STUDY,
    )
    kinds = {c.keyword: (c.kind, c.values) for c in query.conditions}
    assert kinds == {
        "PatientName": (MatchKind.WILDCARD, ("Doe*",)),
        "StudyDate": (MatchKind.RANGE, ("20240101", "")),
        "StudyInstanceUID": (MatchKind.LIST, ("1", "2")),
        "AccessionNumber": (MatchKind.SINGLE, ("A1",)),
    }
    assert model_for_sop_class("1.2.840.10008.5.1.4.1.2.2.1") is Model.STUDY_ROOT
    assert model_for_sop_class("1.2.840.10008.5.1.4.1.2.1.3") is Model.PATIENT_ROOT
    assert Level.IMAGE.depth == 3


# ---- retrieve -------------------------------------------------------------------------------


def test_instances_for_a_study_retrieve(catalog: Catalog) -> None:
    query = parse_identifier(
        identifier("STUDY", StudyInstanceUID="1.2.3.1", PatientName="Nobody", PatientID="PID2"),
        STUDY,
        retrieve=True,
    )
    # A retrieve matches on unique keys only; PatientID is not one in the Study Root.
    assert set(query.ignored) == {"PatientName", "PatientID"}

    got = sorted(instances_for(catalog, query.query), key=lambda r: r.sop_uid)

    assert [r.sop_uid for r in got] == [
        "1.2.3.1.1.1",
        "1.2.3.1.1.2",
        "1.2.3.1.1.3",
        "1.2.3.1.2.1",
    ]
    assert got[0] == InstanceRef(
        sop_uid="1.2.3.1.1.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        object_key="H1/P1/1.2.3.1/1.2.3.1.1/1.2.3.1.1.1",
        study_uid="1.2.3.1",
        series_uid="1.2.3.1.1",
    )
    assert count_instances(catalog, query.query) == 4


def test_instances_for_patient_and_series_retrieves(catalog: Catalog) -> None:
    patient = parse_identifier(identifier("PATIENT", PatientID="PID1"), PATIENT, retrieve=True)
    assert count_instances(catalog, patient.query) == 6
    series = parse_identifier(
        identifier("SERIES", StudyInstanceUID="1.2.3.3", SeriesInstanceUID="1.2.3.3.1\\1.2.3.3.2"),
        STUDY,
        retrieve=True,
    )
    assert sorted(r.sop_uid for r in instances_for(catalog, series.query)) == [
        "1.2.3.3.1.1",
        "1.2.3.3.2.1",
    ]
    refused(identifier("STUDY", StudyInstanceUID=""), STUDY, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            retrieve=True)


# ---- sources --------------------------------------------------------------------------------


def test_run_on_an_engine_and_a_connection(catalog: Catalog) -> None:
    query = parse_identifier(identifier("STUDY", StudyInstanceUID=""), STUDY)
    engine = catalog.engine
    from_engine = list(run(engine, query))
    with engine.connect() as conn:
        from_connection = list(run(conn, query))
    assert len(from_engine) == len(from_connection) == len(STUDIES)
