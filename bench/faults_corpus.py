"""Malformed instances made by mutating real files with a seeded generator.

Each case keeps the file meta whole (so a sender can still name the SOP class, instance and
transfer syntax in its command) and breaks the data set after it in one way, with the
status a receiver must answer:

==================  =====================================================  ==========
kind                what                                                   expected
==================  =====================================================  ==========
cut-inside          cut inside an element's header or value                0xC000
cut-before-uid      cut at an element boundary before SOP Instance UID     0xC000
cut-before-pixels   cut at an element boundary after it, before the pixels 0xA900
bad-vr              an element's VR replaced by two bytes that are no VR   0xC000
bad-length          a short element's length made to run past the data     0xC000
huge-length         a long element's 4-byte length set near 4 GiB          0xC000
wrong-uid           the data set's SOP Instance UID differs from the file  0xC001
                    meta's (the command's)
wrong-class         the data set's SOP Class UID differs from the command  0xA900
bad-uid             a SOP Instance UID with characters a UID cannot hold   0xC000
random-bytes        everything after the first element replaced by noise   0xC000
==================  =====================================================  ==========

Only Explicit VR Little Endian files are mutated (the walk below reads that encoding).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian

CANNOT_UNDERSTAND, UID_MISMATCH, DATASET_MISMATCH = 0xC000, 0xC001, 0xA900
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT",
             b"SV", b"UV"}
_SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
SOP_CLASS, SOP_INSTANCE, PIXEL_DATA = 0x00080016, 0x00080018, 0x7FE00010


@dataclass(frozen=True)
class Element:
    tag: int
    start: int  # offset of the tag in the data set
    value: int  # offset of the value
    end: int  # offset after the value
    vr: bytes
    long: bool  # 4-byte length (after 2 reserved bytes)


@dataclass(frozen=True)
class Case:
    kind: str
    expected: int
    data: bytes  # the whole Part-10 file
    sop_uid: str  # the file meta's (the command's) SOP Instance UID


def elements(ds: bytes) -> list[Element]:
    """The top-level elements of an Explicit VR Little Endian data set."""
    out, pos = [], 0
    while pos + 8 <= len(ds):
        group, elem = struct.unpack_from("<HH", ds, pos)
        vr = ds[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", ds, pos + 8)
            value = pos + 12
        else:
            (length,) = struct.unpack_from("<H", ds, pos + 6)
            value = pos + 8
        if length == 0xFFFFFFFF:
            end = ds.index(_SEQ_END, value) + len(_SEQ_END)
        else:
            end = value + length
        out.append(Element((group << 16) | elem, pos, value, end, vr, vr in _LONG_VRS))
        pos = end
    return out


def split_file(path: Path) -> tuple[bytes, bytes, str]:
    """(preamble + file meta, data set, SOP Instance UID) of an Explicit VR LE file."""
    raw = path.read_bytes()
    meta = pydicom.dcmread(path, stop_before_pixels=True)
    if meta.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        raise ValueError(f"{path.name}: not Explicit VR Little Endian")
    # The meta group's own length says where the data set starts.
    (group_len,) = struct.unpack_from("<I", raw, 128 + 4 + 8)
    offset = 128 + 4 + 12 + group_len
    return raw[:offset], raw[offset:], str(meta.file_meta.MediaStorageSOPInstanceUID)


def _replace(ds: bytes, at: int, new: bytes) -> bytes:
    return ds[:at] + new + ds[at + len(new):]


def _uid_value(ds: bytes, el: Element) -> str:
    return ds[el.value:el.end].rstrip(b"\x00 ").decode("ascii")


def _same_length_uid(uid: str, rng: random.Random) -> str:
    digits = [i for i, c in enumerate(uid) if c.isdigit() and i > 0 and uid[i - 1] != "."]
    i = rng.choice(digits)
    return uid[:i] + str((int(uid[i]) + rng.randint(1, 9)) % 10) + uid[i + 1:]


def mutate(meta: bytes, ds: bytes, uid: str, kind: str, rng: random.Random) -> Case | None:
    """One case of ``kind`` from a file split into ``meta`` and ``ds``; None when this file
    offers no spot for it."""
    els = elements(ds)
    by_tag = {e.tag: e for e in els}
    sop = by_tag[SOP_INSTANCE]
    if kind == "cut-inside":
        el = rng.choice(els)
        cut = rng.randrange(el.start + 1, el.end) if el.end > el.start + 1 else el.start + 1
        return Case(kind, CANNOT_UNDERSTAND, meta + ds[:cut], uid)
    if kind == "cut-before-uid":
        before = [e for e in els if e.start <= sop.start and e.start > 0]
        return Case(kind, CANNOT_UNDERSTAND, meta + ds[:rng.choice(before).start], uid)
    if kind == "cut-before-pixels":
        after = [e for e in els if sop.end <= e.start <= by_tag[PIXEL_DATA].start]
        return Case(kind, DATASET_MISMATCH, meta + ds[:rng.choice(after).start], uid)
    if kind == "bad-vr":
        el = rng.choice(els)
        bad = bytes(rng.choice(b"!#%&?@[]^{}~\x00\x01\x7f\xff") for _ in range(2))
        return Case(kind, CANNOT_UNDERSTAND, meta + _replace(ds, el.start + 4, bad), uid)
    if kind == "bad-length":
        short = [e for e in els if not e.long]
        el = rng.choice(short)
        length = len(ds) - el.value + rng.randint(1, 0xFF)
        if length > 0xFFFF:
            length = 0xFFFF if len(ds) - el.value < 0xFFFF else None  # type: ignore[assignment]
        if length is None:
            return None
        return Case(kind, CANNOT_UNDERSTAND,
                    meta + _replace(ds, el.start + 6, struct.pack("<H", length)), uid)
    if kind == "huge-length":
        el = rng.choice([e for e in els if e.long])
        huge = rng.choice([0xFFFFFFF0, 0xFFFFFFFE, 0x80000000, 0x7FFFFFFE])
        return Case(kind, CANNOT_UNDERSTAND,
                    meta + _replace(ds, el.start + 8, struct.pack("<I", huge)), uid)
    if kind == "wrong-uid":
        other = _same_length_uid(_uid_value(ds, sop), rng)
        return Case(kind, UID_MISMATCH, meta + _replace(ds, sop.value, other.encode()), uid)
    if kind == "wrong-class":
        cls = by_tag[SOP_CLASS]
        now = _uid_value(ds, cls)
        # Another storage class of the same length: MR for CT, CT for anything else.
        other = "1.2.840.10008.5.1.4.1.1.4" if now != "1.2.840.10008.5.1.4.1.1.4" else \
            "1.2.840.10008.5.1.4.1.1.2"
        value = other.encode().ljust(cls.end - cls.value, b"\x00")
        if len(value) != cls.end - cls.value:
            return None
        return Case(kind, DATASET_MISMATCH, meta + _replace(ds, cls.value, value), uid)
    if kind == "bad-uid":
        text = _uid_value(ds, sop)
        i = rng.randrange(2, len(text))
        bad = text[:i] + rng.choice("/:*?<>|") + text[i + 1:]
        new_meta = meta.replace(text.encode(), bad.encode())
        return Case(kind, CANNOT_UNDERSTAND,
                    new_meta + _replace(ds, sop.value, bad.encode()), bad)
    if kind == "random-bytes":
        first = els[0].end
        noise = rng.randbytes(len(ds) - first)
        return Case(kind, CANNOT_UNDERSTAND, meta + ds[:first] + noise, uid)
    raise ValueError(kind)


KINDS = ("cut-inside", "cut-before-uid", "cut-before-pixels", "bad-vr", "bad-length",
         "huge-length", "wrong-uid", "wrong-class", "bad-uid", "random-bytes")


def corpus(bases: list[Path], n: int, seed: int) -> Iterator[Case]:
    """``n`` cases, the kinds in turn, each from a base file chosen by ``seed``."""
    rng = random.Random(seed)
    split = [split_file(p) for p in bases]
    made = 0
    while made < n:
        kind = KINDS[made % len(KINDS)]
        case = mutate(*rng.choice(split), kind, rng)
        if case is not None:
            made += 1
            yield case


def write(cases: list[Case], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, case in enumerate(cases):
        path = folder / f"{i:05d}-{case.kind}.dcm"
        path.write_bytes(case.data)
        paths.append(path)
    return paths
