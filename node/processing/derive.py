"""What a worker derives from one stored instance: the AI input, a preview, the verdict.

    original.dcm ─decode─► frames (modality LUT) ─recipe─► output.npy (AI input)
                                  │                       └► preview.png (for people)
                                  └─ blank filter (native size) ─► verdict
    description.json gains a "processing" section: the state, the recipe, the decode facts,
    pixel statistics and the verdict; objects with no pixels, or pixels that cannot be
    decoded, are described and not preprocessed.

Outputs are written before the description, each encrypted and atomic, so a description
never names an output that is missing; running it again writes the same objects.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from node import describe, metrics
from node.index.records import State
from node.layout import DESCRIPTION, ORIGINAL, OUTPUT, PREVIEW
from pipelines import dicom_seg
from pipelines.blank_filter import Verdict
from pipelines.decode import decode
from pipelines.errors import NotAnImage, UndecodableError
from pipelines.preprocess import grey, preprocess, preview_png
from pipelines.recipe import Recipe


class Judge(Protocol):
    def judge(self, frames: np.ndarray) -> tuple[Verdict, np.ndarray | None]: ...


@dataclass(frozen=True)
class Derived:
    """The result for the index, and the row the filter may learn once it is recorded."""

    state: str
    blank: bool | None
    recipe_id: str | None
    learn: np.ndarray | None = None


def derive(fs: Any, folder: str, recipe: Recipe, judge: Judge,
           max_pixels: int | None = None) -> Derived:
    """Derives and writes the outputs of the instance stored in ``folder`` (an image of
    more than ``max_pixels`` pixels is not decoded: undecodable).

    Raises StoreError / IntegrityError / FileNotFoundError when the store fails or the
    stored objects cannot be read; a decode failure is a result (undecodable), not an error.
    """
    with metrics.timed(metrics.PROCESSING_SECONDS, "read"):
        data = fs.cat_file(f"{folder}/{ORIGINAL}")
        doc = describe.decode(fs.cat_file(f"{folder}/{DESCRIPTION}"))
    at = datetime.now(UTC).isoformat()
    try:
        with metrics.timed(metrics.PROCESSING_SECONDS, "decode"):
            decoded = decode(data, max_pixels)
    except NotAnImage:
        return _describe_only(fs, folder, doc, {"state": State.NOT_IMAGE, "at": at})
    except UndecodableError as exc:
        return _describe_only(fs, folder, doc, {"state": State.UNDECODABLE, "at": at,
                                                "reason": exc.reason})
    with metrics.timed(metrics.PROCESSING_SECONDS, "preprocess"):
        prepared = preprocess(decoded, recipe)
    with metrics.timed(metrics.PROCESSING_SECONDS, "filter"):
        verdict, row = judge.judge(grey(decoded))
    buffer = io.BytesIO()
    np.save(buffer, prepared.array, allow_pickle=False)
    doc["processing"] = {
        "state": State.PROCESSED,
        "at": at,
        "recipe_id": prepared.recipe_id,
        "recipe": recipe.to_mapping(),
        "decode": decoded.facts.to_dict(),
        "stats": asdict(prepared.stats),
        "window": list(prepared.window) if prepared.window is not None else None,
        "output": {"object": OUTPUT, "shape": list(prepared.array.shape),
                   "dtype": str(prepared.array.dtype)},
        "preview": PREVIEW,
        "filter": {"blank": verdict.blank, "reason": verdict.reason,
                   "score": round(verdict.score, 4)},
    }
    with metrics.timed(metrics.PROCESSING_SECONDS, "write"):
        fs.pipe_files({f"{folder}/{OUTPUT}": buffer.getvalue(),
                       f"{folder}/{PREVIEW}": preview_png(prepared),
                       f"{folder}/{DESCRIPTION}": describe.encode(doc)})
    return Derived(State.PROCESSED, verdict.blank, prepared.recipe_id, row)


def _describe_only(fs: Any, folder: str, doc: dict[str, Any],
                   section: dict[str, Any]) -> Derived:
    doc["processing"] = section
    fs.pipe_files({f"{folder}/{DESCRIPTION}": describe.encode(doc)})
    for name in (OUTPUT, PREVIEW):  # outputs of an earlier recipe would be stale
        try:
            fs.rm_file(f"{folder}/{name}")
        except FileNotFoundError:
            pass
    return Derived(section["state"], None, None)


def derive_labels(services: Any, rec: Any) -> Derived:
    """A received DICOM SEG: its segments become label maps of the source images stored
    here (``node.ai.labels``); the SEG itself is described, not preprocessed.

    A SEG that cannot be read or does not fit its images is a result (undecodable).
    Raises StoreError / CatalogError.
    """
    from node.ai import labels

    fs = services.fs
    data = fs.cat_file(f"{rec.object_key}/{ORIGINAL}")
    section: dict[str, Any] = {"at": datetime.now(UTC).isoformat()}
    if dicom_seg.made_here(data):  # a prediction, not a label: never train on it
        section |= {"state": State.NOT_IMAGE,
                    "note": "a segmentation made by this node: not taken as labels"}
    else:
        try:
            section |= {"state": State.LABELS, **labels.from_seg(services, data, rec.sop_uid)}
        except ValueError as exc:  # LabelError included
            section |= {"state": State.UNDECODABLE, "reason": str(exc)}
    doc = describe.decode(fs.cat_file(f"{rec.object_key}/{DESCRIPTION}"))
    return _describe_only(fs, rec.object_key, doc, section)
