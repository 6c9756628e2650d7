"""``support-node demo``: labelled CT phantoms with their DICOM SEGs, for a first model on a
fresh machine.

Each demo patient ``LES-0001``, ``LES-0002``, ... is one study with one axial CT series of
phantom slices (``pipelines.phantoms``: organs, lesions, noise, in Hounsfield units) and one
DICOM SEG of its lesions, made as an annotation station would (``pipelines.synthetic``). The
same seed gives the same pixels; the UIDs are fresh on every run.

Where they go: into this node's store (default, through the same ingest as C-STORE), to a
DICOM node by C-STORE (``--send HOST PORT``), or as files (``--out DIR``, one folder per
patient, for ``storescu +sd +r``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from pydicom.dataset import Dataset

from node.cli.common import ConfigOpt, Context, HomeOpt, app, counted, err, fail, out, run
from node.errors import IngestError
from node.ingest import Source

MAX_PATIENTS = 999


@dataclass(frozen=True)
class DemoPatient:
    """One demo patient: its CT slices and the SEG of their lesions."""

    patient_id: str
    images: list[Dataset]
    seg: Dataset


def demo_patients(n: int, slices: int, size: int, seed: int) -> Iterator[DemoPatient]:
    """``n`` labelled patients, ``LES-0001`` on; patient ``p`` depends only on (seed, p)."""
    from pipelines import phantoms, synthetic

    for p in range(1, n + 1):
        data = phantoms.phantoms(slices, size=size, seed=seed * 100_000 + p)
        patient = synthetic.Patient(patient_id=f"LES-{p:04d}", name=f"Demo^Lesion{p}",
                                    birth_date="19600101", sex="O")
        images, seg = synthetic.labelled_series(data.hu, data.lesion, patient)
        yield DemoPatient(patient.patient_id, images, seg)


def _encode(ds: Dataset) -> bytes:
    from pipelines import dicom_seg
    return dicom_seg.encode(ds)


def _write_files(patients: Iterator[DemoPatient], folder: Path) -> Counter[str]:
    from pipelines import synthetic

    counts: Counter[str] = Counter()
    for patient in patients:
        for ds in patient.images:
            synthetic.write(ds, folder / patient.patient_id / "ct")
            counts["images"] += 1
        synthetic.write(patient.seg, folder / patient.patient_id / "seg")
        counts["DICOM SEG"] += 1
    return counts


def _import(ctx: Context, patients: Iterator[DemoPatient], hospital: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    source = Source(hospital=hospital, via="import")
    with ctx.node(create_keys=True) as node:
        for patient in patients:
            for ds in [*patient.images, patient.seg]:
                try:
                    result = node.core.ingest.accept(_encode(ds), source)
                except IngestError as exc:
                    raise fail(f"could not store a demo instance: {exc}", 3) from None
                counts[result.outcome.value] += 1
    return counts


def _send(patients: Iterator[DemoPatient], host: str, port: int, called: str,
          calling: str) -> Counter[str]:
    """C-STOREs every instance on one association. Raises typer.Exit when the node cannot
    be reached or refuses the association."""
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
    from pynetdicom import AE

    from pipelines.dicom_seg import SEG_STORAGE

    ae = AE(ae_title=calling)
    for sop_class in (CTImageStorage, SEG_STORAGE):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    quiet = logging.getLogger("pynetdicom")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a refused association is reported below, once
    try:
        assoc = ae.associate(host, port, ae_title=called)
    finally:
        quiet.setLevel(level)
    if not assoc.is_established:
        raise fail(f"no association with {called} at {host}:{port} (not listening, or "
                   f"{calling} refused: is it in [dimse.callers]?)", 3)
    counts: Counter[str] = Counter()
    try:
        for patient in patients:
            for ds in [*patient.images, patient.seg]:
                status = assoc.send_c_store(ds)
                ok = status is not None and int(getattr(status, "Status", -1)) == 0
                counts["sent" if ok else "failed"] += 1
    finally:
        assoc.release()
    return counts


@app.command()
def demo(patients: Annotated[int, typer.Option(help="How many patients (LES-0001, ...).")] = 4,
         slices: Annotated[int, typer.Option(help="CT slices per patient.")] = 12,
         size: Annotated[int, typer.Option(help="Rows and columns of each slice.")] = 128,
         seed: Annotated[int, typer.Option(help="Same seed, same pixels.")] = 0,
         send: Annotated[tuple[str, int] | None, typer.Option(
             metavar="HOST PORT", help="C-STORE them to a DICOM node instead.")] = None,
         aec: Annotated[str, typer.Option(help="Called AE title, with --send.")
                        ] = "SUPPORT_NODE",
         aet: Annotated[str, typer.Option(help="Calling AE title, with --send.")] = "DEMO",
         out_dir: Annotated[Path | None, typer.Option(
             "--out", help="Write Part-10 files under DIR/LES-0001/{ct,seg}/ instead.")
         ] = None,
         hospital: Annotated[str, typer.Option(
             help="Hospital to file them under (import into this node).")] = "default",
         home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Make labelled CT phantoms (a CT series and its lesions as a DICOM SEG per patient)
    and store them in this node, send them to one (--send), or write them (--out)."""
    def body() -> None:
        if not 1 <= patients <= MAX_PATIENTS:
            raise fail(f"--patients {patients}: 1 to {MAX_PATIENTS}", 2)
        if slices < 1 or not 16 <= size <= 1024:
            raise fail("--slices at least 1, --size 16 to 1024", 2)
        if send is not None and out_dir is not None:
            raise fail("--send and --out: one or the other", 2)
        made = demo_patients(patients, slices, size, seed)
        if out_dir is not None:
            counts = _write_files(made, out_dir)
            where = f"under {out_dir}"
        elif send is not None:
            counts = _send(made, send[0], send[1], aec, aet)
            where = f"to {aec} at {send[0]}:{send[1]}"
        else:
            counts = _import(Context(home, config), made, hospital)
            where = f"into hospital {hospital}"
        out.print(f"demo: {patients} patients (LES-0001..LES-{patients:04d}), {slices} "
                  f"slices of {size}² and a DICOM SEG each, {where}: "
                  f"{counted(counts, 'nothing')}", highlight=False)
        if counts["failed"]:
            err.print(f"{counts['failed']} instances were refused", highlight=False)
            raise typer.Exit(1)
        if out_dir is None and send is None:
            out.print("the workers of a running `support-node serve` process them; without "
                      "one: support-node worker --once", highlight=False)
    run(body)
