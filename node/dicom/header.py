"""Parse what ingest needs from an encoded instance, without decoding pixels."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.dicom.structure import DEFLATED, IMPLICIT_LE, check_dataset, inflate, split_part10
from node.errors import MalformedError, TooLargeError
from node.layout import PART

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"


@dataclass(frozen=True)
class Header:
    """The parsed header of one instance (pixel data not read)."""

    dataset: Dataset
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    has_pixels: bool
    has_file_meta: bool
    derived: tuple[str, ...] = ()


def _uid(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        raise MalformedError(f"required attribute {keyword} is missing")
    text = str(value).strip().rstrip("\x00")
    if not PART.fullmatch(text) or ".." in text:  # UIDs become object names
        raise MalformedError(f"{keyword} is not a valid UID")
    return text


def derived_uid(sop_instance_uid: str, keyword: str) -> str:
    """A stable stand-in UID (PS3.5 B.2, the 2.25 arc) for a missing Study/Series UID.

    Real archives hold instances that lack these Type 1 attributes; refusing them would
    lose images, so they are filed under a UID derived from their own SOP Instance UID:
    the same instance sent twice lands in the same place.
    """
    digest = hashlib.sha256(f"{keyword}:{sop_instance_uid}".encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def _optional_uid(ds: Dataset, keyword: str, sop_uid: str, derived: list[str]) -> str:
    if str(ds.get(keyword) or "").strip() == "":
        derived.append(keyword)
        return derived_uid(sop_uid, keyword)
    return _uid(ds, keyword)


def _syntax_from_encoding(ds: Dataset) -> str:
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        return IMPLICIT_LE
    return _EXPLICIT_LE if little else _EXPLICIT_BE


def parse(data: bytes, max_bytes: int | None = None) -> Header:
    """Parses and structurally checks one encoded instance (Part-10 file or bare data set).

    Returns:
        the header data set (no pixel data) and the identifying UIDs.
    Raises:
        TooLargeError: larger than ``max_bytes``, as given or once inflated.
        MalformedError: not DICOM, cut short, or a required UID missing or unsafe.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLargeError(f"the instance is larger than {max_bytes} bytes")
    offset, syntax = split_part10(data)
    # A deflated data set is inflated (capped) before pydicom inflates it all at once.
    inflated = inflate(memoryview(data)[offset:], max_bytes) if syntax == DEFLATED else None
    try:
        with warnings.catch_warnings():
            # pydicom warns on many harmless real-world deviations; they are not errors here.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=offset == 0)
            # The header needs nothing more from the bytes; without this the data set keeps
            # its source (for a bytearray, a copy of the whole instance) while it is stored.
            ds.buffer = None
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, TypeError) as exc:
        raise MalformedError(f"not a readable DICOM data set ({type(exc).__name__})") from exc
    except Exception as exc:  # pydicom raises many types on garbage; all mean the same here
        raise MalformedError(f"not a readable DICOM data set ({type(exc).__name__})") from exc
    if syntax is None:
        syntax = _syntax_from_encoding(ds)
    has_pixels = check_dataset(memoryview(data)[offset:], syntax, inflated)
    sop_uid = _uid(ds, "SOPInstanceUID")
    derived: list[str] = []
    return Header(
        dataset=ds,
        transfer_syntax=syntax,
        sop_class_uid=_uid(ds, "SOPClassUID"),
        sop_instance_uid=sop_uid,
        study_uid=_optional_uid(ds, "StudyInstanceUID", sop_uid, derived),
        series_uid=_optional_uid(ds, "SeriesInstanceUID", sop_uid, derived),
        has_pixels=has_pixels,
        has_file_meta=offset > 0,
        derived=tuple(derived),
    )
