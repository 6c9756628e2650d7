"""Labels as a hospital has them: DICOM SEG objects received like any instance, or a folder
of mask files (PNG / NPY) named by SOP Instance UID.

Each labelled image gets ``labels.npy`` (uint8, (frames, rows, cols) at the original's size,
0 background, k the k-th class), encrypted beside it; its description gains a "labels"
section and the index notes the source. Datasets resize it exactly as the image's output.
"""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import select

from node import describe
from node.index import schema
from node.index.records import InstanceRecord, State
from node.layout import DESCRIPTION, LABELS, ORIGINAL
from pipelines import dicom_seg

SUFFIXES = (".png", ".npy")


class LabelError(ValueError):
    """A mask that does not fit its image, or a file that is not a mask."""


def store(services: Any, rec: InstanceRecord, labels: np.ndarray, source: str) -> None:
    """Writes ``labels`` ((rows, cols) or (frames, rows, cols)) as the label map of ``rec``.

    Raises LabelError when its shape is not the image's; StoreError / CatalogError.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[np.newaxis]
    frames = rec.number_of_frames or 1
    if labels.shape != (frames, rec.rows, rec.columns):
        raise LabelError(f"a mask of shape {labels.shape[1:] if frames == 1 else labels.shape}"
                         f" does not fit image {rec.sop_uid} ({frames} x {rec.rows} x "
                         f"{rec.columns})")
    if labels.dtype.kind not in "iub" or labels.min() < 0 or labels.max() > 255:
        raise LabelError(f"the mask of {rec.sop_uid} must hold class numbers 0..255")
    fs = services.fs
    folder = rec.object_key
    doc = describe.decode(fs.cat_file(f"{folder}/{DESCRIPTION}"))
    doc["labels"] = {"source": source, "at": datetime.now(UTC).isoformat(),
                     "classes": sorted(int(v) for v in np.unique(labels))}
    buffer = io.BytesIO()
    np.save(buffer, labels.astype(np.uint8), allow_pickle=False)
    fs.pipe_files({f"{folder}/{LABELS}": buffer.getvalue(),
                   f"{folder}/{DESCRIPTION}": describe.encode(doc)})
    services.catalog.set_labels(rec.sop_uid, source)


def read(services: Any, rec: InstanceRecord) -> np.ndarray:
    """The label map of ``rec``, (frames, rows, cols) uint8. Raises FileNotFoundError."""
    data = services.fs.cat_file(f"{rec.object_key}/{LABELS}")
    return np.load(io.BytesIO(data), allow_pickle=False)


def from_seg(services: Any, data: bytes, seg_uid: str) -> dict[str, Any]:
    """Matches a received DICOM SEG to its source images by the references inside and
    stores a label map on each one that is stored here.

    Returns {"matched": [...], "missing": [...]} (source UIDs); a missing image gets its
    map when it arrives (:func:`match_waiting`). Raises ValueError for a SEG that cannot be
    read, LabelError for one that does not fit its images.
    """
    matched, missing = [], []
    for uid, labels in dicom_seg.read(data).items():
        rec = services.catalog.get_instance(uid)
        if rec is None:
            missing.append(uid)
            continue
        store(services, rec, labels, f"seg:{seg_uid}")
        matched.append(uid)
    return {"matched": matched, "missing": missing}


def waiting_segs(services: Any, rec: InstanceRecord) -> list[tuple[str, str]]:
    """(SOP Instance UID, object key) of the SEGs of ``rec``'s study, in its hospital and
    patient, that were read as labels before every source image had arrived. Raises
    CatalogError."""
    prefix = rec.object_key.rsplit("/", 2)[0] + "/"  # hospital/patient/study/
    t = schema.instances
    stmt = select(t.c.sop_uid, t.c.object_key).where(
        t.c.sop_class_uid == dicom_seg.SEG_STORAGE, t.c.state == State.LABELS,
        t.c.object_key.startswith(prefix, autoescape=True))
    return services.catalog.reading(
        "looking for waiting DICOM SEG", lambda conn: [(r[0], r[1]) for r in conn.execute(stmt)])


def match_waiting(services: Any, rec: InstanceRecord) -> list[str]:
    """Label maps for an image that arrived after its DICOM SEG: every SEG of its study
    that listed it as missing is read again and its map stored; the SEG's description
    moves the image from "missing" to "matched". Returns the UIDs of those SEGs.

    Raises LabelError (a map that does not fit), ValueError (an unreadable SEG),
    StoreError / CatalogError.
    """
    fs = services.fs
    used = []
    for seg_uid, folder in waiting_segs(services, rec):
        doc = describe.decode(fs.cat_file(f"{folder}/{DESCRIPTION}"))
        section = doc.get("processing") or {}
        if rec.sop_uid not in section.get("missing", []):
            continue
        maps = dicom_seg.read(fs.cat_file(f"{folder}/{ORIGINAL}"))
        store(services, rec, maps[rec.sop_uid], f"seg:{seg_uid}")
        section["missing"] = [u for u in section["missing"] if u != rec.sop_uid]
        section["matched"] = [*section.get("matched", []), rec.sop_uid]
        fs.pipe_file(f"{folder}/{DESCRIPTION}", describe.encode(doc))
        used.append(seg_uid)
    return used


def read_mask_file(path: Path) -> np.ndarray:
    """A mask from a PNG (0/255 becomes 0/1; other values are class numbers) or an NPY
    of integers. Raises LabelError."""
    try:
        if path.suffix.lower() == ".npy":
            mask = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as image:
                mask = np.asarray(image.convert("L"))
    except (OSError, ValueError) as exc:
        raise LabelError(f"{path.name}: not a mask file ({exc})") from None
    if mask.dtype.kind not in "iub":
        raise LabelError(f"{path.name}: a mask holds integers, not {mask.dtype}")
    if set(np.unique(mask).tolist()) <= {0, 255}:
        mask = (mask > 0).astype(np.uint8)
    return mask


def import_folder(services: Any, folder: Path) -> tuple[Counter[str], list[str]]:
    """Imports ``{sop_uid}.png|.npy`` files of ``folder`` as label maps.

    Returns outcome counts (imported, unknown, refused) and one message per problem.
    """
    counts: Counter[str] = Counter()
    problems: list[str] = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES):
        rec = services.catalog.get_instance(path.stem)
        if rec is None:
            counts["unknown"] += 1
            problems.append(f"{path.name}: no stored image with this SOP Instance UID")
            continue
        try:
            store(services, rec, read_mask_file(path), "import")
            counts["imported"] += 1
        except LabelError as exc:
            counts["refused"] += 1
            problems.append(str(exc))
    return counts, problems
