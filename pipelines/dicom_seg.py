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


def make(sources: Sequence[Dataset], labels: Sequence[np.ndarray], names: Sequence[str],
         *, series_number: int = 900, algorithm: str = "support-node", version: str = "0",
         series_description: str = "AI segmentation",
         manufacturer: str = "support-node") -> Dataset:
    """A binary DICOM SEG of ``labels`` (one map per source, same rows × cols), one segment
    per name (segment k is label value k), as a new series of the sources' study.
    ``manufacturer``: this software's name marks the SEG as a prediction (``made_here``).

    Raises ValueError for mismatched shapes or multi-frame sources.
    """
    if len(sources) != len(labels) or not sources:
        raise ValueError("one label map per source image is needed")
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
