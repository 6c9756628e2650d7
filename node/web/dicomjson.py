"""DICOM JSON (PS3.18 F.2) of index values, for QIDO-RS responses."""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

_NUMBER_VRS = frozenset(("IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"))


def retrieve_url(study: str, series: str | None = None, sop: str | None = None) -> str:
    """The host-free WADO-RS path of a study, series or instance (``RetrieveURL`` and
    ``BulkDataURI`` values: clients that set ``Host`` without the port still resolve it)."""
    url = f"/dicom-web/studies/{study}"
    if series is not None:
        url += f"/series/{series}"
    if sop is not None:
        url += f"/instances/{sop}"
    return url


def tag_hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


def vr_of(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return dictionary_VR(tag).split(" or ")[0]


def element(keyword: str, value: Any) -> dict[str, Any]:
    """The JSON element of ``keyword`` with a value read from the index (None: empty)."""
    vr = vr_of(keyword)
    entry: dict[str, Any] = {"vr": vr}
    if value is None or value == "":
        return entry
    values = str(value).split("\\") if isinstance(value, str) else [value]
    if vr == "PN":
        entry["Value"] = [{"Alphabetic": v} for v in values]
    elif vr in _NUMBER_VRS:
        entry["Value"] = [_number(v) for v in values]
    else:
        entry["Value"] = values
    return entry


def _number(value: Any) -> int | float | str:
    if isinstance(value, int | float):
        return value
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return str(value)
