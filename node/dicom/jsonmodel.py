"""A fast DICOM JSON model (PS3.18 F.2) of a header, straight from the raw element bytes.

pydicom's ``Dataset.to_json_dict`` converts every element to a Python value first; on the
receive path that costs more than encrypting the whole image. Most header elements are
strings and numbers whose JSON form follows from their bytes and VR, so they are encoded
here directly; sequences and anything already converted go through pydicom.
"""

from __future__ import annotations

import base64
import struct
import warnings
from typing import Any

from pydicom.charset import decode_bytes, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

BULK_THRESHOLD = 1024
_SINGLE = frozenset(("LT", "ST", "UT", "UR"))
_TEXT = frozenset(("AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI",
                   "UR", "UT"))
_CHARSET = frozenset(("LO", "LT", "PN", "SH", "ST", "UC", "UT"))
_BINARY = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN"))
_NUMERIC = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q",
            "UV": "Q"}
_PN_DELIMS = {0x5E, 0x3D}  # ^ and = reset the character set in PN (PS3.5 6.1.2.5.3)
_TEXT_DELIMS = {0x5C}


def _vr_of(raw: RawDataElement, signed: bool) -> str:
    if raw.VR and raw.VR != "UN":
        return str(raw.VR)
    try:
        vr = dictionary_VR(raw.tag)  # implicit VR, or UN for a known tag (as pydicom does)
    except KeyError:
        tag = int(raw.tag)
        if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF:
            return "LO"  # a private creator (PS3.5 7.8.1)
        return "UN"
    if vr == "SQ" and raw.VR == "UN":
        return "UN"
    if " or " in vr:  # US or SS: signed when PixelRepresentation says so
        return "SS" if signed and "SS" in vr else vr.split(" ")[0]
    return vr


def _strings(value: bytes, vr: str, encodings: list[str]) -> list[str]:
    if vr in _CHARSET and encodings != [default_encoding]:
        text = decode_bytes(value, encodings, _PN_DELIMS if vr == "PN" else _TEXT_DELIMS)
    else:
        text = value.decode("latin-1")
    parts = [text] if vr in _SINGLE else text.split("\\")
    return [p.rstrip(" \x00") if vr in _SINGLE else p.strip(" \x00") for p in parts]


def _numbers(parts: list[str], vr: str) -> list[Any] | None:
    out: list[Any] = []
    for p in parts:
        if p == "":
            out.append(None)
            continue
        try:
            if vr == "IS":
                out.append(int(float(p)) if "." in p or "e" in p.lower() else int(p))
            else:
                f = float(p)
                out.append(int(f) if f.is_integer() and "." not in p and "e" not in p.lower()
                           else f)
        except ValueError:
            return None  # not a number: leave the element out, as pydicom's suppress does
    return out


def _raw_json(raw: RawDataElement, vr: str, encodings: list[str]) -> dict[str, Any] | None:
    value = raw.value or b""
    entry: dict[str, Any] = {"vr": vr}
    if not value:
        return entry
    if vr in _BINARY:
        if len(value) > BULK_THRESHOLD:
            entry["BulkDataURI"] = f"original.dcm#{raw.tag:08X}"
        else:
            entry["InlineBinary"] = base64.b64encode(value).decode("ascii")
        return entry
    if vr in _NUMERIC:
        code = _NUMERIC[vr]
        size = struct.calcsize(code)
        count = len(value) // size
        fmt = ("<" if raw.is_little_endian else ">") + code * count
        entry["Value"] = list(struct.unpack(fmt, value[: count * size]))
        return entry
    if vr == "AT":
        count = len(value) // 4
        fmt = ("<" if raw.is_little_endian else ">") + "HH" * count
        pairs = struct.unpack(fmt, value[: count * 4])
        entry["Value"] = [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
        return entry
    if vr == "PN":
        names = []
        for name in _strings(value, vr, encodings):
            groups = name.split("=")
            keys = ("Alphabetic", "Ideographic", "Phonetic")
            doc = {k: g for k, g in zip(keys, groups, strict=False) if g}
            names.append(doc or None)
        entry["Value"] = names
        return entry
    if vr in ("IS", "DS"):
        numbers = _numbers(_strings(value, vr, encodings), vr)
        if numbers is None:
            return None
        entry["Value"] = numbers
        return entry
    if vr in _TEXT:
        entry["Value"] = [s if s != "" else None for s in _strings(value, vr, encodings)]
        return entry
    return None  # unknown VR: let pydicom decide


def to_json(ds: Dataset) -> dict[str, Any]:
    """The DICOM JSON model of ``ds`` (values over 1 KiB become BulkDataURIs).

    Elements whose bytes do not decode are left out, like pydicom's suppress_invalid_tags.
    """
    encodings = _encodings(ds)
    pixel_rep = ds._dict.get(BaseTag(0x00280103))  # noqa: SLF001
    signed = pixel_rep is not None and bool(
        pixel_rep.value not in (None, b"", 0, b"\x00\x00") and (
            pixel_rep.value == 1 or (isinstance(pixel_rep.value, bytes)
                                     and any(pixel_rep.value))))
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        elem = ds._dict[tag]  # noqa: SLF001 - the raw element, without converting it
        key = f"{int(tag):08X}"
        if isinstance(elem, RawDataElement):
            vr = _vr_of(elem, signed)
            if vr != "SQ":
                try:
                    doc = _raw_json(elem, vr, encodings)
                except (UnicodeDecodeError, LookupError, struct.error):
                    doc = None
                if doc is not None:
                    out[key] = doc
                continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[key] = ds[tag].to_json_dict(
                    bulk_data_element_handler=lambda e: f"original.dcm#{e.tag:08X}",
                    bulk_data_threshold=BULK_THRESHOLD)
        except Exception:  # an invalid element is left out, never fails the ingest
            continue
    return out


def _encodings(ds: Dataset) -> list[str]:
    from pydicom.charset import convert_encodings

    raw = ds._dict.get(BaseTag(0x00080005))  # noqa: SLF001
    if raw is None:
        return [default_encoding]
    if isinstance(raw, RawDataElement):
        terms = [t.strip(" \x00") for t in (raw.value or b"").decode("latin-1").split("\\")]
    else:
        value = raw.value
        terms = list(value) if isinstance(value, list | tuple) or hasattr(value, "__iter__") \
            and not isinstance(value, str) else [value]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert_encodings([t for t in terms] or [""])
    except Exception:
        return [default_encoding]
