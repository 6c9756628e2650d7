"""Structural check of an encoded DICOM data set: is every element whole?

pydicom reads a data set cut short in transit without complaint (the last value simply
comes back shorter). A node that acknowledged such an instance would make the sender
forget an image it never really had, so before acknowledging we walk the encoding
ourselves: every element's declared length must fit, every undefined-length sequence
or encapsulated pixel data must reach its delimiter, and the data set must end exactly
at the end of the buffer.

Pure compute over bytes; raises ``MalformedError`` with the offending tag and offset.
"""

from __future__ import annotations

import struct
import zlib

from node.errors import MalformedError, TooLargeError

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
# Explicit VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
LONG_VRS = frozenset(
    b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split()
)
PIXEL_TAGS = frozenset((0x7FE00008, 0x7FE00009, 0x7FE00010))
DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"


class _Walker:
    """Walks elements of one encoding; offsets are into ``buf``."""

    def __init__(self, buf: bytes | memoryview, explicit: bool, little: bool) -> None:
        self.buf = buf
        self.explicit = explicit
        self.u16 = struct.Struct("<H" if little else ">H").unpack_from
        self.u32 = struct.Struct("<I" if little else ">I").unpack_from
        # Item and delimiter tags are encoded in the data set's byte order too.
        self.tag = struct.Struct("<HH" if little else ">HH").unpack_from
        self.saw_pixels = False

    def fail(self, why: str, tag: int, pos: int) -> MalformedError:
        where = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        return MalformedError(f"{why} at element {where}, offset {pos}")

    def read_tag(self, pos: int, end: int) -> int:
        if pos + 4 > end:
            raise MalformedError(f"data set cut short at offset {pos}")
        group, elem = self.tag(self.buf, pos)
        return (group << 16) | elem

    def dataset(self, pos: int, end: int, until_item_end: bool = False) -> int:
        """Validates elements from ``pos``; returns the offset after the last one."""
        while pos < end:
            tag = self.read_tag(pos, end)
            if tag == ITEM_END:
                if not until_item_end:
                    raise self.fail("unexpected item delimiter", tag, pos)
                return pos + 8
            pos = self.element(tag, pos, end)
        if until_item_end:
            raise MalformedError(f"sequence item not terminated before offset {end}")
        return pos

    def element(self, tag: int, pos: int, end: int) -> int:
        start = pos
        if tag in PIXEL_TAGS:
            self.saw_pixels = True
        vr = b""
        if self.explicit and (tag >> 16) != 0xFFFE:
            if pos + 8 > end:
                raise self.fail("element header cut short", tag, pos)
            vr = bytes(self.buf[pos + 4 : pos + 6])
            if not (vr.isalpha() and vr.isupper()):  # PS3.5 6.2: two upper-case letters
                raise self.fail(f"no VR but bytes {vr.hex()}", tag, pos)
            if vr in LONG_VRS:
                if pos + 12 > end:
                    raise self.fail("element header cut short", tag, pos)
                length = self.u32(self.buf, pos + 8)[0]
                pos += 12
            else:
                length = self.u16(self.buf, pos + 6)[0]
                pos += 8
        else:
            if pos + 8 > end:
                raise self.fail("element header cut short", tag, pos)
            length = self.u32(self.buf, pos + 4)[0]
            pos += 8
        if length == UNDEFINED:
            if tag == 0x7FE00010:
                return self.fragments(pos, end, tag)
            if vr == b"UN":
                # PS3.5 6.2.2: an undefined-length UN is a sequence in implicit VR LE.
                return _Walker(self.buf, explicit=False, little=True).sequence(pos, end, tag)
            return self.sequence(pos, end, tag)
        if pos + length > end:
            raise self.fail(f"value of {length} bytes runs past the end of the data", tag, start)
        # Items inside a defined-length sequence are checked too when the VR says SQ; in
        # implicit VR the outer length fitting is what matters, so the value stays opaque.
        if vr == b"SQ":
            self.sequence(pos, pos + length, tag, defined=True)
        return pos + length

    def sequence(self, pos: int, end: int, tag: int, defined: bool = False) -> int:
        """Validates sequence items until the delimiter (undefined) or ``end`` (defined)."""
        while pos < end or not defined:
            item_tag = self.read_tag(pos, end)
            if item_tag == SEQUENCE_END:
                if defined:
                    raise self.fail("sequence delimiter inside a defined-length sequence", tag, pos)
                if pos + 8 > end:
                    raise self.fail("sequence delimiter cut short", tag, pos)
                return pos + 8
            if item_tag != ITEM:
                raise self.fail("expected a sequence item", tag, pos)
            if pos + 8 > end:
                raise self.fail("item header cut short", tag, pos)
            length = self.u32(self.buf, pos + 4)[0]
            pos += 8
            if length == UNDEFINED:
                pos = self.dataset(pos, end, until_item_end=True)
            else:
                if pos + length > end:
                    raise self.fail(f"item of {length} bytes runs past the end", tag, pos)
                self.dataset(pos, pos + length)
                pos += length
        return pos

    def fragments(self, pos: int, end: int, tag: int) -> int:
        """Validates encapsulated pixel data: items of fragments, then the delimiter."""
        while True:
            item_tag = self.read_tag(pos, end)
            if pos + 8 > end:
                raise self.fail("fragment header cut short", tag, pos)
            length = self.u32(self.buf, pos + 4)[0]
            if item_tag == SEQUENCE_END:
                return pos + 8
            if item_tag != ITEM or length == UNDEFINED:
                raise self.fail("expected a pixel data fragment", tag, pos)
            pos += 8
            if pos + length > end:
                raise self.fail(f"fragment of {length} bytes runs past the end", tag, pos)
            pos += length


def inflate(buf: bytes | memoryview, max_bytes: int | None = None) -> bytes:
    """Inflates a deflated data set (raw deflate, PS3.5 A.5) a MiB at a time.

    Raises:
        TooLargeError: it would inflate to more than ``max_bytes`` (an inflation bomb is
            stopped there, not after it filled the memory).
        MalformedError: it cannot be inflated, or is cut short.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending = bytes(buf)
    try:
        while pending and not inflater.eof:
            out += inflater.decompress(pending, 1 << 20)
            pending = inflater.unconsumed_tail
            if max_bytes is not None and len(out) > max_bytes:
                raise TooLargeError(f"the deflated data set inflates to more than "
                                    f"{max_bytes} bytes")
        out += inflater.flush()
    except zlib.error as exc:
        raise MalformedError("deflated data set cannot be inflated") from exc
    if not inflater.eof:
        raise MalformedError("deflated data set cut short")
    return bytes(out)


def check_dataset(buf: bytes | memoryview, transfer_syntax: str,
                  inflated: bytes | None = None) -> bool:
    """Checks that the encoded data set ``buf`` (no file meta) is structurally whole.

    Returns whether the data set carries pixel data (float, double or integer).
    ``inflated``: a deflated data set's inflated bytes, when the caller has them.

    Raises:
        MalformedError: an element, item or fragment runs past the end, a delimiter is
            missing, or the data cannot be inflated (deflated transfer syntax).
    """
    if transfer_syntax == DEFLATED:
        buf = inflated if inflated is not None else inflate(buf)
    explicit = transfer_syntax != IMPLICIT_LE
    little = transfer_syntax != EXPLICIT_BE
    if len(buf) >= 6:
        # Some writers encode in the other VR form than the transfer syntax says; readers
        # (pydicom, dcmtk) accept that by looking at the first element, and so do we.
        explicit = bytes(buf[4:6]).isalpha() and bytes(buf[4:6]).isupper()
    walker = _Walker(buf, explicit, little)
    end = walker.dataset(0, len(buf))
    if end != len(buf):
        raise MalformedError(f"data set cut short at offset {end}")
    return walker.saw_pixels


def split_part10(data: bytes) -> tuple[int, str | None]:
    """Finds where the data set starts in a Part-10 file.

    Returns ``(offset, transfer_syntax_uid)``; ``(0, None)`` when ``data`` has no
    preamble and no file meta group (a bare data set). Raises MalformedError when the
    file meta group itself is cut short.
    """
    pos = 0
    if len(data) >= 132 and data[128:132] == b"DICM":
        pos = 132
    elif data[:4] != b"\x02\x00\x00\x00":
        return 0, None
    walker = _Walker(data, explicit=True, little=True)
    syntax: str | None = None
    while pos + 8 <= len(data):
        tag = walker.read_tag(pos, len(data))
        if tag >> 16 != 0x0002:
            break
        nxt = walker.element(tag, pos, len(data))
        if tag == 0x00020010:
            header = 12 if bytes(data[pos + 4 : pos + 6]) in LONG_VRS else 8
            syntax = bytes(data[pos + header : nxt]).rstrip(b"\x00 ").decode("ascii", "replace")
        pos = nxt
    return pos, syntax
