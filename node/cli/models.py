"""The model commands of the CLI: the library, pretrain, train, evaluate, segment.

torch is imported when one of these runs, so the other commands start fast.
"""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from node.api import Filters, Node
from node.cli.common import (
    AccessionOpt,
    ConfigOpt,
    Context,
    DateOpt,
    HomeOpt,
    ModalityOpt,
    NameOpt,
    app,
    err,
    fail,
    out,
    print_table,
    progress,
    run,
)

library_app = typer.Typer(help="The model parameter library (pretrained encoders, trained "
                               "segmentation networks).", no_args_is_help=True)
app.add_typer(library_app, name="library")

ARCHS = ("fcn", "unet", "unetpp")
Hospital = Annotated[str | None, typer.Argument(help="Hierarchy prefix: hospital.")]
Patient = Annotated[str | None, typer.Argument(help="... patient (ID or pseudonym).")]
Study = Annotated[str | None, typer.Argument(help="... study UID.")]
Series = Annotated[str | None, typer.Argument(help="... series UID.")]
ArchOpt = Annotated[str, typer.Option(help="fcn, unet or unetpp.")]
SizeOpt = Annotated[int | None, typer.Option(
    help="Learn at size × size (outputs scaled on the fly). Default: the config's size "
         "([pretrain] or [train], 128 for a CPU), never above the outputs' own.")]
FeaturesOpt = Annotated[str | None, typer.Option(
    help="Encoder channels, shallow to deep, e.g. 16,32,64,128,256.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, or cuda.")]


def _library(node: Node) -> Any:
    from node.ai.library import Library  # torch: imported by the model commands only
    return Library.of(node)


def _arch(arch: str) -> str:
    if arch not in ARCHS:
        raise fail(f"--arch {arch!r}: one of {', '.join(ARCHS)}", 2)
    return arch


def _features(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise fail(f"--features {text!r}: comma-separated channel counts", 2) from None
    return values


class _Interrupt:
    """Ctrl-C (or SIGTERM) asks a long run to stop at the next batch and save what it has."""

    def __init__(self) -> None:
        self.asked = False

    def __enter__(self) -> _Interrupt:
        self._old = {sig: signal.signal(sig, self._ask) for sig in (signal.SIGINT,
                                                                     signal.SIGTERM)}
        return self

    def _ask(self, *_: object) -> None:
        if self.asked:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.asked = True
        err.print("stopping after this batch; a second Ctrl-C stops at once")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _records(node: Node, hierarchy: tuple[str | None, str | None, str | None, str | None],
             where: Filters, include_blank: bool = False, labelled: bool = False
             ) -> list[Any]:
    from node.ai import dataset

    hospital, patient, study, series = hierarchy
    records = dataset.select(node, hospital, patient, study, series, where=where,
                             include_blank=include_blank, labelled=labelled)
    if not records:
        what = "labelled processed images" if labelled else "processed images"
        raise fail(f"no {what} under that hierarchy", 1)
    return records


@app.command()
def pretrain(hospital: Hospital = None, patient: Patient = None, study: Study = None,
             series: Series = None, arch: ArchOpt = "unet",
             clusters: Annotated[int | None, typer.Option(
                 help="K of k-means (default: pretrain.clusters of the config, 50).")] = None,
             epochs: Annotated[int | None, typer.Option(
                 help="Training epochs (default: pretrain.epochs of the config, 10).")] = None,
             reassign: Annotated[int, typer.Option(
                 help="T: epochs between two clusterings.")] = 1,
             pca_dim: Annotated[int, typer.Option(help="PCA-whitening dimensions.")] = 64,
             batch_size: int = 32, lr: float = 0.05, seed: int = 0,
             size: SizeOpt = None, features: FeaturesOpt = None, device: DeviceOpt = "cpu",
             include_blank: Annotated[bool, typer.Option(
                 help="Also learn from images flagged blank.")] = False,
             patient_name: NameOpt = None, study_date: DateOpt = None,
             modality: ModalityOpt = None, accession: AccessionOpt = None,
             home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """DeepCluster self-supervised pretraining of an architecture's encoder on stored,
    unlabelled images; the encoder goes into the model library. Ctrl-C saves a checkpoint."""
    def body() -> None:
        from node.ai import runs
        from pipelines.models import DEFAULT_FEATURES, NetConfig
        from pipelines.pretrain.deepcluster import DeepClusterConfig

        ctx = Context(home, config)
        defaults = ctx.settings.pretrain
        try:
            net = NetConfig(_arch(arch), _features(features) or DEFAULT_FEATURES)
            settings = DeepClusterConfig(
                clusters=defaults.clusters if clusters is None else clusters,
                epochs=defaults.epochs if epochs is None else epochs,
                reassign=reassign, pca_dim=pca_dim, batch_size=batch_size, lr=lr, seed=seed,
                device=device)
        except (ValueError, RuntimeError) as exc:
            raise fail(str(exc), 2) from None
        where = Filters(patient_name, study_date, modality, accession)
        with ctx.node() as node:
            records = _records(node, (hospital, patient, study, series), where, include_blank)
            side = _chosen_size(node, records, size, defaults.size)
            with progress() as bar, _Interrupt() as stop:
                task = bar.add_task(
                    f"pretraining {arch} on {len(records)} images at {_side(side)}, "
                    f"{settings.clusters} clusters", total=settings.epochs)

                def on_round(r: dict[str, Any]) -> None:
                    nmi = "-" if r.get("nmi") is None else f"{r['nmi']:.3f}"
                    loss = "-" if r.get("loss") is None else f"{r['loss']:.3f}"
                    bar.console.print(f"{_round_name(r, settings)}: NMI to the previous "
                                      f"{nmi}, loss {loss}, {r.get('empty_reseeded')} empty "
                                      f"clusters re-seeded, {r.get('seconds', 0):.1f} s",
                                      highlight=False)

                try:
                    entry = runs.pretrain(node, net, records, settings, size=side,
                                          on_round=on_round,
                                          on_epoch=lambda _e: bar.advance(task),
                                          should_stop=lambda: stop.asked)
                except ValueError as exc:
                    raise fail(str(exc), 2) from None
        card = entry.card
        state = "stopped early; checkpoint saved" if card["stopped"] else "saved"
        out.print(f"{state} as {entry.id}: {len(card['history'])} rounds of clustering over "
                  f"{card['epochs_completed']} of {settings.epochs} epochs, "
                  f"{card['seconds']} s", highlight=False)
    run(body)


def _side(size: int | None) -> str:
    return "the outputs' size" if size is None else f"{size}²"


def _chosen_size(node: Node, records: list[Any], given: int | None, configured: int
                 ) -> int | None:
    """--size as given (0: the outputs' size), else the config's, never above the outputs'.
    None: learn at the outputs' size."""
    if given is not None:
        return given or None
    from node.ai.dataset import learning_size
    return learning_size(node, records, configured)


def _round_name(r: dict[str, Any], settings: Any) -> str:
    """``round 2 of 3 (epoch 2)``, ``round 1 of 2 (epochs 1-2)``: which epochs it trained."""
    first, n = int(r.get("epoch", 0)) + 1, int(r.get("epochs", 0))
    epochs = f"epoch {first}" if n == 1 else f"epochs {first}-{first + n - 1}" if n else \
        "no epoch"
    return f"round {r.get('round')} of {settings.rounds} ({epochs})"


def _init(init: str) -> str | None:
    if init == "none":
        return None
    if not init.startswith("library:"):
        raise fail(f"--init {init!r}: library:ARCH/VERSION or none", 2)
    return init.removeprefix("library:")


@app.command("train")
def train_(hospital: Hospital = None, patient: Patient = None, study: Study = None,
           series: Series = None, arch: ArchOpt = "unet",
           init: Annotated[str, typer.Option(
               help="library:ARCH/VERSION (a pretrained encoder or a network) or none.")
           ] = "none",
           epochs: Annotated[int | None, typer.Option(
               help="Training epochs (default: train.epochs of the config, 10).")] = None,
           batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
           classes: Annotated[int, typer.Option(help="Classes, background included.")] = 2,
           val_fraction: Annotated[float, typer.Option(
               help="Patients held out for validation.")] = 0.2,
           size: SizeOpt = None, features: FeaturesOpt = None, device: DeviceOpt = "cpu",
           patient_name: NameOpt = None, study_date: DateOpt = None,
           modality: ModalityOpt = None, accession: AccessionOpt = None,
           home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Train a segmentation network (Dice + cross-entropy) on labelled images, from a
    library entry or from scratch; the best epoch by validation Dice goes into the library."""
    def body() -> None:
        from node.ai import dataset, runs
        from pipelines.models import DEFAULT_FEATURES, NetConfig

        ctx = Context(home, config)
        start = _init(init)
        where = Filters(patient_name, study_date, modality, accession)
        with ctx.node() as node:
            chosen = _features(features)
            if start is not None and chosen is None:  # the library entry's own encoder
                chosen = tuple(_library(node).get(start).card["net"]["features"])
            try:
                net = NetConfig(_arch(arch), chosen or DEFAULT_FEATURES, n_classes=classes)
                records = _records(node, (hospital, patient, study, series), where,
                                   labelled=True)
                train_set, val_set = dataset.split_by_patient(records, val_fraction, seed)
            except ValueError as exc:
                raise fail(str(exc), 2) from None
            rounds = ctx.settings.train.epochs if epochs is None else epochs
            side = _chosen_size(node, records, size, ctx.settings.train.size)
            with progress() as bar:
                task = bar.add_task(f"training {arch} on {len(train_set)} images "
                                    f"({len(val_set)} for validation) at {_side(side)}",
                                    total=rounds)

                def on_epoch(log: dict[str, Any]) -> None:
                    bar.advance(task)
                    bar.console.print(f"epoch {log['epoch']}: loss {log['loss']:.4f}, "
                                      f"validation Dice {log['val_dice']:.4f}")

                trained = runs.train_segmentation(
                    node, net, start, train_set, val_set, epochs=rounds,
                    batch_size=batch_size, lr=lr, seed=seed, size=side, device=device,
                    on_epoch=on_epoch)
        metrics = trained.entry.card["metrics"]
        out.print(f"saved as {trained.entry.id}: best validation Dice "
                  f"{metrics['val_dice']:.4f} at epoch {metrics['best_epoch']}", highlight=False)
    run(body)


@app.command("evaluate")
def evaluate_(hospital: Hospital = None, patient: Patient = None, study: Study = None,
              series: Series = None,
              model: Annotated[str, typer.Option(help="Library id, e.g. unet/3.")] = "",
              size: Annotated[int | None, typer.Option(
                  help="Evaluate at size × size (default: the size the model was trained "
                       "at).")] = None,
              device: DeviceOpt = "cpu",
              as_json: Annotated[bool, typer.Option("--json")] = False,
              home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Mean foreground Dice of a library network on labelled images. With no hierarchy,
    only the patients held out from its training (its validation split, and patients
    labelled since); with one, the images given, with a warning for any it has seen."""
    def body() -> None:
        from node.ai import runs

        if not model:
            raise fail("--model: a library id such as unet/3", 2)
        ctx = Context(home, config)
        given = any((hospital, patient, study, series))
        with ctx.node() as node:
            records = _records(node, (hospital, patient, study, series), Filters(),
                               labelled=True)
            entry = _library(node).get(model)
            scored = "the images given" if given else "every labelled image"
            if not given:
                kept = runs.held_out(node, model, records)
                if kept is not None and not kept:
                    raise fail(f"every labelled image is of a patient {model} was trained on; "
                               "give a hierarchy to score them anyway (not a fair test)", 1)
                if kept is None:
                    err.print(f"[yellow]warning:[/] {model} has no manifest.json to tell "
                              "which images it was trained on: scoring every labelled image",
                              highlight=False)
                else:
                    records, scored = kept, f"patients held out from {model}'s training"
            dice = runs.evaluate_model(node, model, records,
                                       size=size or entry.card.get("size"), device=device)
            overlap = runs.seen_before(node, model, records)
        patients = len({(r.hospital, r.patient_key) for r in records})
        for part, n in overlap.items():
            err.print(f"[yellow]warning:[/] {n} of the {patients} evaluated patients are in "
                      f"the data of {part}: this Dice is not a fair test", highlight=False)
        if as_json:
            print(json.dumps({"model": model, "images": len(records), "patients": patients,
                              "scored": scored, "dice": dice, "overlap": overlap}))
        else:
            out.print(f"{model}: Dice {dice:.4f} on {len(records)} labelled images of "
                      f"{patients} patient{'' if patients == 1 else 's'} ({scored})",
                      highlight=False)
    run(body)


@app.command()
def segment(hospital: Hospital = None, patient: Patient = None, study: Study = None,
            series: Series = None,
            model: Annotated[str, typer.Option(help="Library id, e.g. unet/3.")] = "",
            device: DeviceOpt = "cpu", home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Segment processed images with a library network: an encrypted label map per image,
    and per series a DICOM SEG stored as a new series of its study."""
    def body() -> None:
        from node.ai import runs

        if not model:
            raise fail("--model: a library id such as unet/3", 2)
        ctx = Context(home, config)
        with ctx.node() as node:
            _library(node).get(model)
            records = _records(node, (hospital, patient, study, series), Filters(),
                               include_blank=True)
            groups: dict[str, list[Any]] = {}
            for rec in records:
                groups.setdefault(rec.series_uid, []).append(rec)
            counts: Counter[str] = Counter()
            with progress() as bar:
                task = bar.add_task("segmenting", total=len(groups))
                for items in groups.values():
                    done = runs.segment_series(node, model, items, device=device)
                    counts["images"] += done.images
                    counts["DICOM SEG"] += done.seg_uid is not None
                    if done.note:
                        err.print(done.note)
                    bar.advance(task)
        out.print(f"segmented {counts['images']} images in {len(groups)} series; "
                  f"{counts['DICOM SEG']} DICOM SEG stored", highlight=False)
        sys.stdout.flush()
    run(body)


@library_app.command("ls")
def library_ls(home: HomeOpt = None, config: ConfigOpt = None,
               as_json: Annotated[bool, typer.Option("--json", help="One card per line.")] = False,
               ) -> None:
    """List library entries: id, kind, data, metrics, when."""
    def body() -> None:
        ctx = Context(home, config)
        with ctx.node() as node:
            entries = _library(node).entries()
        if as_json:
            for entry in entries:
                print(json.dumps(entry.card))
            return
        table = Table("id", "kind", "init", "images", "metric", "created", box=None)
        for e in entries:
            metrics = e.card.get("metrics", {})
            metric = next((f"{k} {v:.4f}" for k, v in metrics.items()
                           if isinstance(v, float)), "")
            table.add_row(e.id, e.kind, str(e.card.get("init") or ""),
                          str(e.card.get("data", {}).get("count", "")), metric,
                          str(e.card.get("created_at", ""))[:19])
        print_table(table)
        out.print(f"{len(entries)} entries")
    run(body)


@library_app.command("show")
def library_show(entry_id: Annotated[str, typer.Argument(help="arch/version, e.g. unet/3")],
                 home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Print an entry's model card (JSON)."""
    def body() -> None:
        ctx = Context(home, config)
        with ctx.node() as node:
            print(json.dumps(_library(node).get(entry_id).card, indent=2))
    run(body)


@library_app.command("export")
def library_export(entry_id: Annotated[str, typer.Argument(help="arch/version")],
                   out_dir: Annotated[Path, typer.Option("--out", help="Folder.")] = Path("."),
                   home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Write an entry, decrypted, to --out/{arch}-{version}/: weights.pt, card.json (the
    model card) and manifest.json (the images it was made from: SOP Instance UIDs and
    sha256). `library import` takes --out or that folder."""
    def body() -> None:
        ctx = Context(home, config)
        with ctx.node() as node:
            target = _library(node).export(entry_id, out_dir)
        names = ", ".join(sorted(p.name for p in target.iterdir()))
        out.print(f"wrote {target} ({names})", highlight=False)
    run(body)


@library_app.command("import")
def library_import(folder: Annotated[Path, typer.Argument(
                       help="An exported entry's folder, or the --out folder of `library "
                            "export` when it holds one entry.")],
                   home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Add an exported entry (from this node or another) as a new version."""
    def body() -> None:
        ctx = Context(home, config)
        with ctx.node() as node:
            entry = _library(node).import_(folder)
        out.print(f"imported as {entry.id}", highlight=False)
    run(body)


