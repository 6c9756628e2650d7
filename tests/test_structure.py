"""Is what arrived whole? The structural check and header parse that stand before every ack.

A data set cut short must never be acknowledged: the sender would forget an image the node
never really had. These tests cut real encodings (generated, and pydicom's own files) at
every kind of place a transfer can stop and expect MalformedError each time.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.uid import UID

from node.dicom.header import parse
from node.dicom.structure import check_dataset, split_part10
from node.errors import MalformedError
from pipelines import synthetic
from tests.fixtures.node import PYDICOM_FILES, pydicom_test_files

# pydicom's deliberately broken files: cut short, or (no_meta.dcm) one stray byte before the
# first element, so that pydicom itself reads garbage from it.
BROKEN = {"MR_truncated.dcm", "rtplan_truncated.dcm", "no_meta.dcm"}
# Whole data sets that are fragments for pydicom's unit tests, not instances: no SOP UID.
NOT_INSTANCES = {"UN_sequence.dcm", "empty_charset_LEI.dcm", "meta_missing_tsyntax.dcm",
                 "nested_priv_SQ.dcm", "no_meta_group_length.dcm", "priv_SQ.dcm"}
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct_bytes(**changes: str) -> bytes:
    ds = synthetic.ct_study(series=1, per_series=1, size=64, seed=7)[0]
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return encode(ds)


def pydicom_file(name: str) -> bytes:
    return (PYDICOM_FILES / name).read_bytes()


def structure(data: bytes) -> bool:
    """check_dataset on the data set part of a Part-10 file."""
    offset, syntax = split_part10(data)
    assert syntax is not None
    return check_dataset(memoryview(data)[offset:], syntax)


def element_ends(data: bytes) -> set[int]:
    """Offsets (into the file) where a top-level element of the data set ends, per pydicom."""
    offset, syntax = split_part10(data)
    fp = io.BytesIO(data)
    fp.seek(offset)
    ends = set()
    for _ in data_element_generator(fp, syntax == "1.2.840.10008.1.2", True):
        ends.add(fp.tell())  # the generator has read the whole element by now
    assert max(ends) == len(data)
    return ends


# -- whole files pass ---------------------------------------------------------------------

def test_generated_file_passes() -> None:
    data = ct_bytes()
    header = parse(data)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.study_uid == ds.StudyInstanceUID
    assert header.series_uid == ds.SeriesInstanceUID
    assert header.sop_class_uid == ds.SOPClassUID
    assert header.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert header.has_pixels and header.has_file_meta and header.derived == ()
    assert "PixelData" not in header.dataset  # pixels are never decoded at ingest


def test_bare_data_set_without_file_meta_passes() -> None:
    data = ct_bytes()
    offset, _ = split_part10(data)
    header = parse(data[offset:])
    assert not header.has_file_meta
    assert header.transfer_syntax == "1.2.840.10008.1.2.1"


@pytest.mark.parametrize(
    "path", [p for p in pydicom_test_files() if p.name not in BROKEN], ids=lambda p: p.name)
def test_pydicom_whole_files_pass(path: Path) -> None:
    data = path.read_bytes()
    if path.name in NOT_INSTANCES:
        # Structurally whole, refused only for what they lack.
        with pytest.raises(MalformedError, match="SOPInstanceUID is missing"):
            parse(data)
    else:
        header = parse(data)
        assert _UID.fullmatch(header.sop_instance_uid)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_pydicom_broken_files_are_refused(name: str) -> None:
    with pytest.raises(MalformedError):
        parse(pydicom_file(name))


def test_garbage_is_refused() -> None:
    for data in (b"", b"hello world", b"\x00" * 200, b"\x00" * 128 + b"DICM" + b"\x02\x00"):
        with pytest.raises(MalformedError):
            parse(data)


# -- cut short inside an element ------------------------------------------------------------

def test_cut_inside_any_element_is_refused() -> None:
    data = ct_bytes()
    offset, syntax = split_part10(data)
    ends = element_ends(data)
    pixel_start = data.index(b"\xe0\x7f\x10\x00OW")
    cuts = [n for n in range(offset + 1, pixel_start + 200) if n not in ends]
    assert len(cuts) > 1000
    for n in cuts:
        with pytest.raises(MalformedError):
            check_dataset(memoryview(data)[offset:n], syntax or "")
    # The whole path (pydicom first, then the walk) on a sample, and inside the pixels.
    for n in [*cuts[::37], len(data) - 1, len(data) - 2, (pixel_start + len(data)) // 2]:
        with pytest.raises(MalformedError):
            parse(data[:n])


def test_cut_at_element_boundary_is_a_shorter_whole_data_set() -> None:
    # The limit of any structural check: a data set that stops between elements is whole.
    # (Pixel data is last, so such a cut loses it; a C-STORE of it still has its UIDs.)
    data = ct_bytes()
    offset, syntax = split_part10(data)
    pixel_start = data.index(b"\xe0\x7f\x10\x00OW")
    assert check_dataset(memoryview(data)[offset:pixel_start], syntax or "") is False
    assert check_dataset(memoryview(data)[offset:], syntax or "") is True


def test_cut_inside_file_meta_is_refused() -> None:
    data = ct_bytes()
    offset, _ = split_part10(data)
    for n in range(133, offset):
        with pytest.raises(MalformedError):
            parse(data[:n])


def test_extra_bytes_after_the_last_element_are_refused() -> None:
    with pytest.raises(MalformedError):
        parse(ct_bytes() + b"\x01\x02\x03")


# -- cut short inside a sequence item -------------------------------------------------------

def _with_sequence(undefined: bool) -> bytes:
    ds = synthetic.ct_study(series=1, per_series=1, size=64, seed=3)[0]
    items = []
    for n in range(2):
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.2.1125.{n + 1}"
        item.is_undefined_length_sequence_item = undefined
        items.append(item)
    ds.ReferencedImageSequence = items
    ds["ReferencedImageSequence"].is_undefined_length = undefined
    return encode(ds)


@pytest.mark.parametrize("undefined", [True, False], ids=["undefined-length", "defined-length"])
def test_cut_inside_a_sequence_is_refused(undefined: bool) -> None:
    data = _with_sequence(undefined)
    assert len(pydicom.dcmread(io.BytesIO(data)).ReferencedImageSequence) == 2
    structure(data)  # whole: passes
    offset, syntax = split_part10(data)
    start = data.index(b"\x08\x00\x40\x11SQ")
    length = struct.unpack_from("<I", data, start + 8)[0]
    if undefined:
        assert length == 0xFFFFFFFF
        end = data.index(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", start) + 8
    else:
        end = start + 12 + length
    # Every cut from inside the sequence header to before its end, including cuts that fall
    # between the elements of an item (an item or the sequence is then never closed).
    for n in range(start + 1, end):
        with pytest.raises(MalformedError):
            check_dataset(memoryview(data)[offset:n], syntax or "")
    with pytest.raises(MalformedError):
        parse(data[: end - 4])


def test_pydicom_implicit_sequences_cut_short_are_refused() -> None:
    data = pydicom_file("rtplan.dcm")
    structure(data)
    offset, syntax = split_part10(data)
    for n in range(offset + 1, len(data), 13):
        try:
            check_dataset(memoryview(data)[offset:n], syntax or "")
        except MalformedError:
            continue
        # Passing is only allowed where a top-level element ends.
        assert n in element_ends(data)


# -- cut short inside encapsulated pixel data -----------------------------------------------

@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm",
                                  "JPEG2000-embedded-sequence-delimiter.dcm"])
def test_cut_inside_encapsulated_fragments_is_refused(name: str) -> None:
    data = pydicom_file(name)
    assert structure(data) is True
    offset, syntax = split_part10(data)
    pixel_start = data.index(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    # Where each fragment (and the offset table) ends: a cut there lacks the delimiter.
    fragment_ends, pos = [], pixel_start + 12
    while data[pos : pos + 4] == b"\xfe\xff\x00\xe0":
        pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
        fragment_ends.append(pos)
    assert data[pos:] == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert len(fragment_ends) >= 2
    step = max(1, (len(data) - pixel_start) // 1500)
    cuts = {*range(pixel_start + 1, len(data), step), *fragment_ends, len(data) - 1,
            len(data) - 4, *(e + 4 for e in fragment_ends[:-1])}
    for n in sorted(cuts):
        with pytest.raises(MalformedError):
            check_dataset(memoryview(data)[offset:n], syntax or "")
    with pytest.raises(MalformedError):
        parse(data[: fragment_ends[-1]])


# -- cut short inside a deflated data set ---------------------------------------------------

def test_cut_inside_deflated_data_set_is_refused() -> None:
    data = pydicom_file("image_dfl.dcm")
    offset, syntax = split_part10(data)
    assert syntax == "1.2.840.10008.1.2.1.99"
    assert parse(data).has_pixels
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflater.decompress(data[offset:])
    stream_end = len(data) - len(inflater.unused_data)
    for n in range(offset, stream_end, 7):
        with pytest.raises(MalformedError):
            check_dataset(memoryview(data)[offset:n], syntax)
    with pytest.raises(MalformedError):
        parse(data[: stream_end - 1])


def test_deflate_of_a_data_set_cut_short_is_refused() -> None:
    # The stream is complete, but what it carries was cut before it was compressed.
    data = pydicom_file("image_dfl.dcm")
    offset, syntax = split_part10(data)
    inflated = zlib.decompress(data[offset:], -zlib.MAX_WBITS)
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    whole = compressor.compress(inflated) + compressor.flush()
    check_dataset(whole, syntax or "")
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    cut = compressor.compress(inflated[:-1001]) + compressor.flush()
    with pytest.raises(MalformedError):
        check_dataset(cut, syntax or "")
    with pytest.raises(MalformedError):
        check_dataset(b"\x00garbage that does not inflate", syntax or "")


# -- undefined-length UN (PS3.5 6.2.2) -------------------------------------------------------

def _un_element() -> bytes:
    data = pydicom_file("UN_sequence.dcm")
    offset, _ = split_part10(data)
    element = data[offset:]
    assert element[4:12] == b"UN\x00\x00\xff\xff\xff\xff"
    return element


def test_undefined_length_un_sequence_passes() -> None:
    data = pydicom_file("UN_sequence.dcm")
    assert structure(data) is False  # whole, no pixels
    with pytest.raises(MalformedError):
        check_dataset(_un_element()[:-8], "1.2.840.10008.1.2.4.70")


def test_instance_with_undefined_length_un_sequence_is_accepted() -> None:
    data = ct_bytes()
    pixel_start = data.index(b"\xe0\x7f\x10\x00OW")
    # (4453,100C) sorts between the image attributes and the pixel data.
    spliced = data[:pixel_start] + _un_element() + data[pixel_start:]
    assert parse(spliced).has_pixels
    cut_inside = pixel_start + len(_un_element()) - 20
    with pytest.raises(MalformedError):
        parse(spliced[:cut_inside] + data[pixel_start:])


# -- UIDs -------------------------------------------------------------------------------------

def test_derived_study_and_series_uids_are_stable_and_valid() -> None:
    data = pydicom_file("JPEGLSNearLossless_08.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    assert "StudyInstanceUID" not in ds and "SeriesInstanceUID" not in ds
    first, again = parse(data), parse(bytes(data))
    assert first.derived == ("StudyInstanceUID", "SeriesInstanceUID")
    assert (first.study_uid, first.series_uid) == (again.study_uid, again.series_uid)
    assert first.study_uid != first.series_uid
    for uid in (first.study_uid, first.series_uid):
        assert uid.startswith("2.25.")
        assert len(uid) <= 64
        assert _UID.fullmatch(uid) and UID(uid).is_valid
    other = parse(pydicom_file("JPEGLSNearLossless_16.dcm"))
    if other.derived:  # another instance: another place
        assert other.study_uid != first.study_uid


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom's, about the bad UID
@pytest.mark.parametrize("bad", ["1.2.826/0.1.3680043", "1.2.826..0.1.368004",
                                 "../../../etc/passwd", ".2.826.0.1.3680043"])
def test_unsafe_sop_instance_uid_is_refused(bad: str) -> None:
    good = "1.2.826.0.1.3680043"[: len(bad)].ljust(len(bad), "1")
    data = ct_bytes(SOPInstanceUID=good)
    # Byte-for-byte substitution: what a hostile or broken sender could put on the wire.
    tampered = data.replace(good.encode(), bad.encode())
    assert tampered != data
    with pytest.raises(MalformedError, match="SOPInstanceUID"):
        parse(tampered)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_unsafe_study_uid_is_refused() -> None:
    with pytest.raises(MalformedError, match="StudyInstanceUID"):
        parse(ct_bytes(StudyInstanceUID="1.2.3/4"))


def test_missing_sop_class_uid_is_refused() -> None:
    ds = synthetic.ct_study(series=1, per_series=1, size=64)[0]
    del ds.SOPClassUID
    with pytest.raises(MalformedError, match="SOPClassUID"):
        parse(encode(ds))
