"""DICOM Segmentation objects (highdicom): made from label maps on source images, and read
back into label maps per source image.

A label map is (rows, cols) of small integers: 0 background, k the k-th segment. Only
single-frame source images are handled (each CT/MR slice is its own instance, which is how
a PACS sends them); a multi-frame source raises ``ValueError``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


class CannotMakeSegError(ValueError):
    """Source images no SEG can be made for: for example no Frame of Reference UID and no
    image position, orientation and pixel spacing to derive one for. The message is one
    line, starting "no DICOM SEG:"."""


def make(sources: Sequence[Dataset], labels: Sequence[np.ndarray], names: Sequence[str],
         *, series_number: int = 900, algorithm: str = "support-node", version: str = "0",
         series_description: str = "AI segmentation",
         manufacturer: str = "support-node") -> Dataset:
    """A binary DICOM SEG of ``labels`` (one map per source, same rows × cols), one segment
    per name (segment k is label value k), as a new series of the sources' study.
    ``manufacturer``: this software's name marks the SEG as a prediction (``made_here``).

    Sources without a Frame of Reference UID get one derived from their series
    (:func:`with_frame_of_reference`). Raises ValueError for mismatched shapes,
    multi-frame sources; CannotMakeSegError (a ValueError) for sources no SEG can be made
    for (no geometry at all).
    """
    if len(sources) != len(labels) or not sources:
        raise ValueError("one label map per source image is needed")
    sources = with_frame_of_reference(sources)
    for ds, lab in zip(sources, labels, strict=True):
        if int(ds.get("NumberOfFrames") or 1) != 1:
            raise ValueError("multi-frame source images are not supported")
        if lab.shape != (int(ds.Rows), int(ds.Columns)):
            raise ValueError(f"label map {lab.shape} does not match its image "
                             f"{(int(ds.Rows), int(ds.Columns))}")
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm, version=version, family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k, segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion if "lesion" in name.lower()
            else codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id)
        for k, name in enumerate(names, start=1)]
    stack = np.stack([np.asarray(lab, dtype=np.uint8) for lab in labels])
    try:
        return _segmentation(sources, stack, descriptions, algorithm=algorithm,
                             version=version, series_number=series_number,
                             series_description=series_description, manufacturer=manufacturer)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # highdicom refused
        raise CannotMakeSegError(f"no DICOM SEG: {' '.join(str(exc).split())[:200]}"
                                 ) from exc


def _segmentation(sources: Sequence[Dataset], stack: np.ndarray,
                  descriptions: list[hd.seg.SegmentDescription], *, algorithm: str,
                  version: str, series_number: int, series_description: str,
                  manufacturer: str) -> Dataset:
    seg = hd.seg.Segmentation(
        source_images=list(sources), pixel_array=stack,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=manufacturer, manufacturer_model_name=algorithm,
        software_versions=version, device_serial_number="0",
        series_description=series_description, omit_empty_frames=False,
        transfer_syntax_uid=ExplicitVRLittleEndian)
    return seg


_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


def has_frame_of_reference(sources: Sequence[Dataset]) -> bool:
    """True when every source image names its Frame of Reference UID."""
    return all(str(ds.get("FrameOfReferenceUID", "")) for ds in sources)


def with_frame_of_reference(sources: Sequence[Dataset]) -> list[Dataset]:
    """``sources`` as they are when each has a Frame of Reference UID; else header copies
    (the originals untouched) given one derived from their series UID, the same on every
    run, so a SEG can be made. A single image of a class that does not need one (secondary
    capture) is left as it is.

    Raises CannotMakeSegError when an image lacks its position, orientation or pixel spacing
    too: nothing to place a SEG frame on.
    """
    if has_frame_of_reference(sources):
        return list(sources)
    if any(not ds.get(name) for ds in sources for name in _GEOMETRY):
        if len(sources) == 1 and "FrameOfReferenceUID" not in sources[0]:
            return list(sources)  # highdicom places one image without a frame of reference
        raise CannotMakeSegError("no DICOM SEG: the source images have no Frame of Reference "
                              "UID and no image position, orientation and pixel spacing")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in sources}
    frame = generate_uid(entropy_srcs=["frame-of-reference", *sorted(series)])
    copies = []
    for ds in sources:
        copy = Dataset(dict(ds.items()))  # a new element table: the original keeps its own
        if hasattr(ds, "file_meta"):
            copy.file_meta = ds.file_meta
        copy.FrameOfReferenceUID = frame
        copies.append(copy)
    return copies


MANUFACTURER = "support-node"


def made_here(data: bytes) -> bool:
    """True for a SEG this software made (its Manufacturer): a prediction, not a label."""
    from pydicom import dcmread

    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:  # unreadable: not ours; reading it as labels will say why
        return False
    return str(ds.get("Manufacturer", "")) == MANUFACTURER


def encode(ds: Dataset) -> bytes:
    """``ds`` as Part-10 bytes (with a file meta header), as a PACS would send it."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read(data: bytes) -> dict[str, np.ndarray]:
    """The label map of each referenced source image of a SEG: {SOP Instance UID: (rows,
    cols) uint8, segment k as value k, overlaps going to the higher segment}.

    Raises ValueError when ``data`` is not a readable DICOM SEG.
    """
    try:
        seg = hd.seg.segread(io.BytesIO(data))
        sources = [str(uid) for _, _, uid in seg.get_source_image_uids()]
        numbers = list(seg.get_segment_numbers())
        out = {}
        for uid in sources:
            pixels = seg.get_pixels_by_source_instance(
                [uid], segment_numbers=numbers, combine_segments=False,
                skip_overlap_checks=True,
                # many SEGs leave SpatialLocationsPreserved out; the frames still map 1:1
                ignore_spatial_locations=True)[0]  # (rows, cols, segments)
            lab = np.zeros(pixels.shape[:2], dtype=np.uint8)
            for i, number in enumerate(numbers):
                lab[pixels[..., i] > 0] = number
            out[uid] = lab
        return out
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"not a readable DICOM SEG: {' '.join(str(exc).split())[:300]}"
                         ) from exc
