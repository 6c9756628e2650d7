"""PyTorch datasets that read the node's outputs straight from the encrypted store.

    records = select(node, "default", where=Filters(modality="CT"))   # processed, not blank
    train, val = split_by_patient(records, 0.2, seed=0)               # no patient on both
    data = OutputDataset(node, train, labels=True)                    # (image, mask) pairs
    manifest(train).digest                                            # what a run used

Each item is one frame: a float32 tensor (1, size, size) in [0, 1] and, with ``labels``,
an int64 mask (size, size) placed exactly as the image (``resize_labels``).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from node import describe
from node.index.records import InstanceRecord, State
from node.layout import DESCRIPTION, LABELS, OUTPUT
from pipelines.preprocess import resize_labels


def select(node: Any, hospital: str | None = None, patient: str | None = None,
           study: str | None = None, series: str | None = None, where: Any = None,
           include_blank: bool = False, labelled: bool = False) -> list[InstanceRecord]:
    """The processed images below a hierarchy prefix (and matching ``where``, a
    ``node.api.Filters``): images flagged blank are left out unless ``include_blank``;
    with ``labelled``, only images that have a label map. Raises QueryError."""
    return [rec for rec in node.ls(hospital, patient, study, series, None, where,
                                   None if include_blank else False)
            if rec.state == State.PROCESSED and (rec.labels is not None or not labelled)]


def learning_size(node: Any, records: Sequence[InstanceRecord], size: int) -> int | None:
    """The side to learn at for a configured ``size`` (0: the outputs' own): ``size`` when
    it is below the side of the first record's output, else None (the outputs' size, as
    they are: never scaled up). Raises StoreError."""
    if size <= 0 or not records:
        return None
    side = int(OutputDataset(node, records[:1])[0].shape[-1])
    return size if size < side else None


def split_by_patient(records: Sequence[InstanceRecord], val_fraction: float = 0.2,
                     seed: int = 0) -> tuple[list[InstanceRecord], list[InstanceRecord]]:
    """Train and validation records, split by patient so no patient is on both sides.

    At least one patient goes to each side when there are two or more. Raises ValueError
    for a fraction outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    patients = sorted({(r.hospital, r.patient_key) for r in records})
    random.Random(seed).shuffle(patients)
    n_val = round(len(patients) * val_fraction)
    if val_fraction > 0 and len(patients) >= 2:
        n_val = min(max(n_val, 1), len(patients) - 1)
    held = set(patients[:n_val])
    train = [r for r in records if (r.hospital, r.patient_key) not in held]
    val = [r for r in records if (r.hospital, r.patient_key) in held]
    return train, val


@dataclass(frozen=True)
class Manifest:
    """Exactly which instances a run used: SOP UID, the original's sha256, the recipe of the
    output, and whether a label map was used. ``digest`` identifies the whole set."""

    items: tuple[tuple[str, str, str, str | None], ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.items)).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "count": len(self.items),
                "items": [{"sop_instance_uid": u, "sha256": h, "recipe_id": r, "labels": lab}
                          for u, h, r, lab in self.items]}


def manifest(records: Iterable[InstanceRecord], labels: bool = False) -> Manifest:
    """The manifest of a set of records."""
    return Manifest(tuple((r.sop_uid, r.sha256, r.recipe_id or "", r.labels if labels
                           else None) for r in records))


class OutputDataset(Dataset[Any]):
    """Frames of the records' ``output.npy``, decrypted on read (one instance cached, so
    the frames of a multi-frame image are read once per pass).

    ``node``: the ``node.api.Node`` the records were selected from (or its ``core``).
    ``labels``: items are (image, mask); records without a label map raise
    FileNotFoundError when read (``select(..., labelled=True)`` avoids them).
    ``size``: items scaled to size × size on the fly (area for images, nearest for masks),
    e.g. 128² for experiments on a CPU from 512² outputs; None keeps the output's size.
    ``float32``: images as float32 (what a network on the CPU takes); False keeps the
    stored dtype (float16 by default: half the bytes to move; convert on the GPU with
    ``batch.to(device).float()``, where it costs nothing, instead of ~0.7 ms per 512²
    image on a CPU core).
    """

    def __init__(self, node: Any, records: Sequence[InstanceRecord],
                 labels: bool = False, size: int | None = None, float32: bool = True) -> None:
        # ``node``: a node.api.Node, as ``select`` takes, or its core (what callers gave
        # before, as ``node.services``)
        self.fs = getattr(node, "core", node).fs
        self.records = list(records)
        self.labels = labels
        self.size = size
        self.float32 = float32
        self.index = [(i, f) for i, r in enumerate(self.records)
                      for f in range(r.number_of_frames or 1)]
        self._cached: tuple[int, np.ndarray, np.ndarray | None] | None = None
        self._keep_aspect: dict[int, bool] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> Any:
        i, frame = self.index[item]
        image, mask = self._load(i)
        resize = self.size is not None and image.shape[-1] != self.size
        if self.float32 or resize:
            x = torch.from_numpy(np.asarray(image[frame], dtype=np.float32)).unsqueeze(0)
        else:
            x = torch.from_numpy(np.ascontiguousarray(image[frame])).unsqueeze(0)
        if resize:
            assert self.size is not None
            x = F.interpolate(x.unsqueeze(0), size=(self.size, self.size), mode="area")[0]
        if not self.labels:
            return x
        assert mask is not None
        y = torch.from_numpy(mask[frame].astype(np.int64))
        if self.size is not None and y.shape[-1] != self.size:
            y = F.interpolate(y[None, None].float(), size=(self.size, self.size),
                              mode="nearest")[0, 0].long()
        return x, y

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self._cached is not None and self._cached[0] == i:
            return self._cached[1], self._cached[2]
        folder = self.records[i].object_key
        image = np.load(io.BytesIO(self.fs.cat_file(f"{folder}/{OUTPUT}")), allow_pickle=False)
        mask = None
        if self.labels:
            native = np.load(io.BytesIO(self.fs.cat_file(f"{folder}/{LABELS}")),
                             allow_pickle=False)
            keep = self._keep(i)
            size = image.shape[-1]
            mask = np.stack([resize_labels(m, size, keep) for m in native])
        self._cached = (i, image, mask)
        return image, mask

    def _keep(self, i: int) -> bool:
        if i not in self._keep_aspect:
            doc = describe.decode(self.fs.cat_file(f"{self.records[i].object_key}/{DESCRIPTION}"))
            self._keep_aspect[i] = bool(doc["processing"]["recipe"].get("keep_aspect", True))
        return self._keep_aspect[i]
