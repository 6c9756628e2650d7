"""Runs of the model library: pretrain, train, evaluate, segment. The CLI and the job
worker call these; the algorithms are in ``pipelines`` (pretrain, segment, models).

Every run that makes a model saves it to the library with a card: the network's settings,
the run's settings, the data manifest (its digest in the card, the full list beside it as
``manifest.json``), metrics, history, time and code version.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom

from node.ai import dataset
from node.ai.library import Entry, Library
from node.index.records import InstanceRecord, State
from node.layout import PREDICTION, prediction_name  # noqa: F401  (PREDICTION: for callers)
from pipelines import dicom_seg
from pipelines.models import NetConfig, build_from
from pipelines.preprocess import restore_labels
from pipelines.pretrain.deepcluster import DeepClusterConfig, pretrain_encoder
from pipelines.segment.train import evaluate, predict, train

Callback = Callable[[dict[str, Any]], Any]


def _manifest_files(**parts: dataset.Manifest) -> tuple[dict[str, Any], dict[str, bytes]]:
    card = {name: {"digest": m.digest, "count": len(m.items)} for name, m in parts.items()}
    full = {name: m.to_dict() for name, m in parts.items()}
    return card, {"manifest.json": json.dumps(full).encode()}


def pretrain(node: Any, net: NetConfig, records: Sequence[InstanceRecord],
             config: DeepClusterConfig, *, size: int | None = None,
             on_round: Callback | None = None, on_epoch: Callback | None = None,
             should_stop: Callable[[], bool] | None = None) -> Entry:
    """DeepCluster on the outputs of ``records``; the encoder goes into the library.

    A run stopped by ``should_stop`` is saved too (its card says so): a checkpoint.
    Raises ValueError (too few images for the clusters), LibraryError, StoreError.
    """
    model = build_from(net, seed=config.seed)
    images = dataset.OutputDataset(node.services, records, size=size)
    start = time.perf_counter()
    result = pretrain_encoder(model, images, config, on_round=on_round, on_epoch=on_epoch,
                              should_stop=should_stop)
    rounds = [r.as_dict() for r in result.history]
    data, files = _manifest_files(data=dataset.manifest(records))
    last = rounds[-1] if rounds else {}
    card = {"net": net.to_dict(), "pretrain": config.as_dict(), "size": size,
            "data": data["data"], "history": rounds, "stopped": result.stopped,
            "epochs_completed": result.epochs_completed,
            "metrics": {k: float(last[k]) for k in ("nmi", "loss") if last.get(k) is not None},
            "seconds": round(time.perf_counter() - start, 2), "images": len(images)}
    return Library.of(node).save(net.arch, "pretrain", {"encoder": result.encoder_state}, card,
                              files)


@dataclass(frozen=True)
class Trained:
    entry: Entry
    history: list[dict[str, Any]]


def train_segmentation(node: Any, net: NetConfig, init: str | None,
                       train_records: Sequence[InstanceRecord],
                       val_records: Sequence[InstanceRecord], *, epochs: int = 10,
                       batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
                       size: int | None = None, device: str = "cpu",
                       on_epoch: Callback | None = None) -> Trained:
    """Trains a segmentation network on labelled outputs (Dice + cross-entropy), starting
    from library entry ``init`` (an encoder or a whole network) or from scratch; the best
    epoch by validation Dice goes into the library. Raises LibraryError, StoreError."""
    model = build_from(net, seed=seed)
    if init is not None:
        Library.of(node).load_into(model, init)
    train_set = dataset.OutputDataset(node.services, train_records, labels=True, size=size)
    val_set = (dataset.OutputDataset(node.services, val_records, labels=True, size=size)
               if val_records else None)
    start = time.perf_counter()
    result = train(model, train_set, val_set, epochs=epochs, batch_size=batch_size, lr=lr,
                   seed=seed, device=device,
                   on_epoch=(lambda log: on_epoch(dict(log))) if on_epoch else None)
    history = [dict(h) for h in result.history]
    data, files = _manifest_files(train=dataset.manifest(train_records, labels=True),
                                  validation=dataset.manifest(val_records, labels=True))
    card = {"net": net.to_dict(), "init": init, "size": size,
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                      "loss": "DiceCE", "optimizer": "adam", "device": device},
            "data": data, "history": history,
            "metrics": {"val_dice": float(result.best_val_dice),
                        "best_epoch": result.best_epoch},
            "seconds": round(time.perf_counter() - start, 2)}
    entry = Library.of(node).save(net.arch, "segment", {"model": result.best_state}, card, files)
    return Trained(entry, history)


def evaluate_model(node: Any, entry_id: str, records: Sequence[InstanceRecord],
                   size: int | None = None, device: str = "cpu") -> float:
    """Mean foreground Dice of a library network on labelled outputs (NaN: no foreground)."""
    model = Library.of(node).build(entry_id)
    data = dataset.OutputDataset(node.services, records, labels=True, size=size)
    return evaluate(model.to(device), data, device=device)


def trained_on(node: Any, entry_id: str) -> set[str] | None:
    """SOP Instance UIDs of the images a library entry was trained on (its manifest's
    ``train`` part); None when it has no manifest to tell. Raises StoreError."""
    from node.ai import cards

    try:
        doc = json.loads(node.core.fs.cat_file(f"{cards.folder(entry_id)}/manifest.json"))
    except FileNotFoundError:
        return None
    part = doc.get("train")
    if part is None:
        return None
    return {item["sop_instance_uid"] for item in part.get("items", [])}


def held_out(node: Any, entry_id: str, records: Sequence[InstanceRecord]
             ) -> list[InstanceRecord] | None:
    """The records of patients none of whose images the entry was trained on (its
    validation split, and patients stored since); None when the entry's training data is
    not known (no manifest). Raises StoreError."""
    trained = trained_on(node, entry_id)
    if trained is None:
        return None
    seen = {(r.hospital, r.patient_key) for r in records if r.sop_uid in trained}
    return [r for r in records if (r.hospital, r.patient_key) not in seen]


def seen_before(node: Any, entry_id: str, records: Sequence[InstanceRecord]
                ) -> dict[str, int]:
    """Evaluated patients whose images a library entry, or the pretrained encoder it
    started from, already saw: ``{"entry_id (part)": patients}`` for every manifest part
    (training, validation, pretraining data) that overlaps; empty when none does. An
    evaluation on them is not a fair test. Raises StoreError."""
    from node.ai import cards

    seen: dict[str, set[str]] = {}
    chain, current = [], entry_id
    while current and current not in chain:
        chain.append(current)
        init = cards.read(node.core.fs, current).card.get("init")
        current = str(init).removeprefix("library:") if init else ""
    for entry in chain:
        try:
            doc = json.loads(node.core.fs.cat_file(f"{cards.folder(entry)}/manifest.json"))
        except FileNotFoundError:
            continue
        for part, manifest in doc.items():
            uids = {item["sop_instance_uid"] for item in manifest.get("items", [])}
            seen[f"{entry} ({part})"] = uids
    patients: dict[str, set[str]] = {}
    for rec in records:
        patients.setdefault(rec.patient_key, set())
    for key in patients:
        patients[key] = {r.sop_uid for r in node.core.catalog.instances(None, key)}
    out = {}
    for label, uids in seen.items():
        overlap = sum(1 for sops in patients.values() if sops & uids)
        if overlap:
            out[label] = overlap
    return out


@dataclass(frozen=True)
class Segmented:
    images: int
    seg_uid: str | None
    note: str = ""


def segment_series(node: Any, entry_id: str, records: Sequence[InstanceRecord],
                   device: str = "cpu") -> Segmented:
    """Runs a library network on processed images: per image an encrypted label map at the
    original's size (``prediction-{arch}-{version}.npy``), and per series a DICOM SEG
    stored through ingest as a new series of the same study (a PACS pulls it with C-MOVE).

    Multi-frame images, and images no SEG can be made for (no geometry at all), get their
    label maps but no SEG; images with no Frame of Reference UID get a SEG with one derived
    from their series. Both are said in ``note``. Raises LibraryError, StoreError,
    IngestError.
    """
    lib = Library.of(node)
    entry = lib.get(entry_id)
    model = lib.build(entry_id).to(device)
    size = entry.card.get("size")
    name = prediction_name(entry_id)
    fs = node.services.fs
    by_series: dict[str, list[tuple[InstanceRecord, np.ndarray]]] = {}
    count = 0
    for rec in records:
        if rec.state != State.PROCESSED:
            continue
        output = node.read_output(rec).astype(np.float32)
        doc = node.read_description(rec)
        keep = bool(doc["processing"]["recipe"].get("keep_aspect", True))
        labels = _predict(model, output, size, device)
        native = np.stack([restore_labels(lab, rec.rows or lab.shape[0],
                                          rec.columns or lab.shape[1], keep) for lab in labels])
        buffer = io.BytesIO()
        np.save(buffer, native, allow_pickle=False)
        fs.pipe_file(f"{rec.object_key}/{name}", buffer.getvalue())
        by_series.setdefault(rec.series_uid, []).append((rec, native))
        count += 1
    seg_uid, notes = None, []
    for items in by_series.values():
        if any((r.number_of_frames or 1) > 1 for r, _ in items):
            notes.append("multi-frame images: label maps written, no DICOM SEG")
            continue
        sources = [pydicom.dcmread(io.BytesIO(node.read_original(r)), stop_before_pixels=True)
                   for r, _ in items]
        try:
            seg = dicom_seg.make(sources, [lab[0] for _, lab in items], _segment_names(entry),
                                 algorithm=f"support-node {entry_id}", version=entry_id)
        except dicom_seg.CannotMakeSegError as exc:  # the label maps stand; say why no SEG
            notes.append(f"series {items[0][0].series_uid}: {exc}")
            continue
        if not dicom_seg.has_frame_of_reference(sources):
            notes.append(f"series {items[0][0].series_uid}: the images have no Frame of "
                         "Reference UID; the DICOM SEG has one derived from the series")
        result = node.write(dicom_seg.encode(seg), hospital=items[0][0].hospital,
                            via="segment")
        seg_uid = result.sop_uid
    return Segmented(count, seg_uid, "; ".join(notes))


def _segment_names(entry: Entry) -> list[str]:
    n_classes = int(entry.card.get("net", {}).get("n_classes", 2))
    names = entry.card.get("classes") or [f"lesion {k}" if n_classes > 2 else "lesion"
                                          for k in range(1, n_classes)]
    return [str(n) for n in names]


def _predict(model: Any, output: np.ndarray, size: int | None, device: str) -> np.ndarray:
    """Label maps at the output's size for frames (n, S, S), the model run at ``size``."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(output)
    side = output.shape[-1]
    if size is not None and size != side:
        x = F.interpolate(x.unsqueeze(1), size=(size, size), mode="area")[:, 0]
    labels = torch.from_numpy(predict(model, x, device=device))
    if labels.shape[-1] != side:
        labels = F.interpolate(labels[:, None].float(), size=(side, side),
                               mode="nearest")[:, 0].to(torch.uint8)
    return labels.numpy()
