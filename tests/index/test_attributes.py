"""The one attribute table: everything that derives from it stays in step."""

from __future__ import annotations

import dataclasses

from pydicom.datadict import keyword_for_tag

from node import describe
from node.dimse.status import Status, qr_status_for
from node.index import attributes, schema
from node.index.catalog import _INSTANCE_FIELDS, _PATIENT_FIELDS, _SERIES_FIELDS, _STUDY_FIELDS
from node.index.query import QueryError, QueryLevelError, QueryValueError
from node.index.records import InstanceRecord

TABLES = {attributes.Level.PATIENT: schema.patients, attributes.Level.STUDY: schema.studies,
          attributes.Level.SERIES: schema.series, attributes.Level.IMAGE: schema.instances}


def test_keywords_and_tags_agree_with_the_dicom_dictionary() -> None:
    for attr in attributes.ALL:
        assert keyword_for_tag(int(attr.tag, 16)) == attr.keyword


def test_every_described_attribute_has_a_column_a_record_field_and_a_tag() -> None:
    fields = {f.name for f in dataclasses.fields(InstanceRecord)}
    maps = {**_PATIENT_FIELDS, **_STUDY_FIELDS, **_SERIES_FIELDS, **_INSTANCE_FIELDS}
    read = {**describe._TEXT_TAGS, **describe._INT_TAGS}
    for attr in attributes.DESCRIBED:
        assert attr.column in TABLES[attr.level].c, attr.keyword
        assert attr.field in fields, f"InstanceRecord lacks {attr.field}"
        assert maps[attr.field] == attr.column
        assert read[attr.field] == attr.tag


def test_keys_and_computed_attributes_have_columns() -> None:
    for attr in (*attributes.KEYS, *attributes.COMPUTED):
        if attr.column:
            assert attr.column in TABLES[attr.level].c, attr.keyword


def test_lookup_by_keyword_or_hex_tag() -> None:
    assert attributes.lookup("PatientName") is attributes.lookup("00100010")
    assert attributes.lookup("0020000d").keyword == "StudyInstanceUID"
    assert attributes.lookup("NotAKeyword") is None


def test_every_query_error_has_a_dimse_status() -> None:
    assert qr_status_for(QueryLevelError("x"), retrieve=False) == Status.DATASET_MISMATCH
    assert qr_status_for(QueryValueError("x"), retrieve=True) == Status.CANNOT_UNDERSTAND
    for kind in QueryError.__subclasses__():
        assert qr_status_for(kind("x"), retrieve=False) not in (Status.FIND_UNABLE,), kind
