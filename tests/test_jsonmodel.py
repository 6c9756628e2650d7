"""The fast DICOM JSON model agrees with pydicom's on real files."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.dicom.header import parse
from node.dicom.jsonmodel import to_json
from pipelines import synthetic
from tests.fixtures.node import pydicom_test_files


def _normal(entry: dict[str, Any]) -> dict[str, Any]:
    """Empty strings and padding inside multi-values are insignificant (PS3.18 F.2.5)."""
    values = entry.get("Value")
    if values is None:
        return entry
    out = [v.strip() or None if isinstance(v, str) else v for v in values]
    return {**entry, "vr": str(entry["vr"]), "Value": out}


def _pydicom_json(path: Path) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return ds.to_json_dict(bulk_data_threshold=1024,
                               bulk_data_element_handler=lambda e: "x",
                               suppress_invalid_tags=True)


def _files() -> list[Path]:
    out = []
    for p in pydicom_test_files():
        try:
            parse(p.read_bytes())
        except Exception:
            continue
        out.append(p)
    return out


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_matches_pydicom_on_strings_numbers_and_names(path: Path) -> None:
    ours = to_json(parse(path.read_bytes()).dataset)
    theirs = _pydicom_json(path)
    for tag, entry in theirs.items():
        if entry.get("vr") in ("SQ", "UN") or "Value" not in entry or tag not in ours:
            continue
        assert _normal(ours[tag]) == _normal(entry), tag
    # Patient, study and instance identity always come through.
    for tag in ("00080016", "00080018"):
        assert ours[tag]["Value"] == theirs[tag]["Value"]


def test_generated_ct_header(tmp_path: Path) -> None:
    ds = synthetic.ct_study(series=1, per_series=1)[0]
    doc = to_json(parse(synthetic.write(ds, tmp_path).read_bytes()).dataset)
    assert doc["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert doc["00280010"] == {"vr": "US", "Value": [64]}
    assert doc["00281052"] == {"vr": "DS", "Value": [-1024]}
    assert doc["00200013"] == {"vr": "IS", "Value": [1]}
    assert "7FE00010" not in doc  # no pixel data in a header
