"""The archive: what is stored, read back by UID within a caller's hospitals.

Protocol-free reads for the retrieve edges (WADO-RS today; C-MOVE/C-GET read through the
same instance lists): the instances of a study, series or instance; the original as stored
(streamed, decrypting chunk by chunk) or transcoded to Explicit VR Little Endian; its
description; single frames, as stored or decoded. A UID outside the caller's hospitals is
not found, exactly like one that does not exist.

Raises FileNotFoundError (nothing matches), StoreError / IntegrityError (the store failed or
an object failed authentication), CatalogError (the index failed), ValueError (a frame
number out of range, a transfer syntax that cannot be produced).
"""

from __future__ import annotations

import io
from collections.abc import Collection, Iterator
from typing import Any

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from node import describe
from node.core import Core
from node.index.query import InstanceRef, Level, build, instances_for
from node.layout import DESCRIPTION, ORIGINAL, InstancePath
from node.pseudonym import pseudonymise

CHUNK = 1 << 20
_NATIVE_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


class Archive:
    """Reads of one core's store, by the UIDs of the hierarchy."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def instances(self, hospitals: Collection[str] | None, study: str,
                  series: str | None = None, sop: str | None = None) -> list[InstanceRef]:
        """The instances below the given UIDs, ordered by series then instance UID.

        Raises FileNotFoundError when there are none (in these hospitals)."""
        keys = [("StudyInstanceUID", [study]), ("SeriesInstanceUID", [series or ""]),
                ("SOPInstanceUID", [sop or ""])]
        query = build(Level.IMAGE, keys)
        if hospitals is not None:
            query = query.restricted_to(hospitals)
        refs = sorted(instances_for(self.core.catalog, query),
                      key=lambda r: (r.series_uid, r.sop_uid))
        if not refs:
            raise FileNotFoundError("no such study, series or instance")
        return refs

    def stream_original(self, ref: InstanceRef) -> Iterator[bytes]:
        """The stored bytes, CHUNK at a time (one chunk in memory at once)."""
        with self.core.fs.open(f"{ref.object_key}/{ORIGINAL}", "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def stream_part10(self, ref: InstanceRef) -> Iterator[bytes]:
        """The stored instance as a Part-10 file, CHUNK at a time: the stored bytes, behind
        a preamble and ``DICM`` when a sender left them out (STOW-RS clients often do);
        an original stored without any file meta gets one built (decoded, so not streamed).
        """
        chunks = self.stream_original(ref)
        first = next(chunks, b"")
        if first[128:132] == b"DICM":
            yield first
        elif first[:2] == b"\x02\x00":  # a file meta group without the preamble
            yield bytes(128) + b"DICM" + first
        else:
            data = first + b"".join(chunks)
            try:
                yield _part10(pydicom.dcmread(io.BytesIO(data), force=True), ref)
            except Exception:  # cannot be rebuilt: the stored bytes, as they are
                yield data
            return
        yield from chunks

    def original(self, ref: InstanceRef) -> bytes:
        return bytes(self.core.fs.cat_file(f"{ref.object_key}/{ORIGINAL}"))

    def pseudonymised(self, ref: InstanceRef, explicit_le: bool) -> bytes:
        """The instance as a Part-10 file for a pseudonymous caller (node/pseudonym.py),
        transcoded to Explicit VR Little Endian when ``explicit_le`` (ValueError when it
        cannot be)."""
        data = self.original(ref)
        if explicit_le:
            data = self.to_explicit_le(data)
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        return _part10(pseudonymise(ds, InstancePath.parse(ref.object_key).patient), ref)

    def description(self, ref: InstanceRef) -> dict[str, Any]:
        return describe.decode(self.core.fs.cat_file(f"{ref.object_key}/{DESCRIPTION}"))

    @staticmethod
    def to_explicit_le(data: bytes) -> bytes:
        """The instance in Explicit VR Little Endian: stored bytes when it is already, else
        transcoded (compressed pixel data decoded). Raises ValueError when it cannot be."""
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        stored = UID(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
        if stored == ExplicitVRLittleEndian:
            return data
        try:
            if stored.is_compressed and "PixelData" in ds:
                ds.decompress()
            elif "PixelData" in ds and stored == ExplicitVRBigEndian:
                arr = ds.pixel_array
                ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
                ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
        except Exception as exc:  # a decoder pydicom lacks, a broken fragment
            raise ValueError(f"cannot transcode from {stored.name}: "
                             f"{type(exc).__name__}") from exc
        return out.getvalue()

    @staticmethod
    def frames(data: bytes, numbers: list[int] | None,
               as_stored: bool) -> list[tuple[bytes, str]]:
        """Frames ``numbers`` (1-based; None: every frame) of an instance, each with its
        transfer syntax UID.

        ``as_stored``: compressed frames exactly as stored (their syntax); otherwise every
        frame is native little endian pixel data (Explicit VR Little Endian).
        Raises ValueError (no pixel data, a frame number out of range, undecodable)."""
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "PixelData" not in ds:
            raise ValueError("the instance has no pixel data")
        count = int(ds.get("NumberOfFrames", 1) or 1)
        numbers = list(range(1, count + 1)) if numbers is None else numbers
        if any(n < 1 or n > count for n in numbers):
            raise ValueError(f"frame numbers run from 1 to {count}")
        stored = UID(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
        if stored.is_compressed and as_stored:
            frames = list(generate_frames(ds.PixelData, number_of_frames=count))
            return [(frames[n - 1], str(stored)) for n in numbers]
        if stored in _NATIVE_LE and int(ds.BitsAllocated) % 8 == 0:
            size = len(ds.PixelData) // count
            return [(bytes(ds.PixelData[(n - 1) * size:n * size]), ExplicitVRLittleEndian)
                    for n in numbers]
        out = []
        for n in numbers:
            try:
                arr = pixel_array(io.BytesIO(data), index=n - 1, raw=True)
            except Exception as exc:
                raise ValueError(f"cannot decode frame {n}: {type(exc).__name__}") from exc
            little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            out.append((np.ascontiguousarray(little).tobytes(), str(ExplicitVRLittleEndian)))
        return out


def _part10(ds: pydicom.Dataset, ref: InstanceRef) -> bytes:
    """``ds`` written as a Part-10 file, with file meta (the stored syntax when it had none)."""
    ds.ensure_file_meta()
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = UID(ref.transfer_syntax_uid)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
