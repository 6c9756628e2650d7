"""Browsing what is stored: ``ls`` and ``get``.

``ls`` prints a table a person can read on 80 columns (patient ID and name, study date,
series and instance numbers, state); ``--wide`` adds the pseudonym and every UID, whole,
to pass on to ``get``; ``--json`` gives every indexed attribute. The CLI's user holds the
node's keys, so they are shown patients' identities; object names never carry them.

An empty answer is an answer, not a failure: when nothing matches, ``ls`` and ``get`` both
say "nothing matched" (naming the hierarchy parts and filters given, not their values) on
stderr and exit 0, as a C-FIND without matches ends in Success. Scripts tell by the count
(``0 instances``, ``wrote 0 files``) or by an empty ``--json`` output.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from node.api import Filters, Node
from node.cli.common import (
    _BLANK_CHOICES,
    AccessionOpt,
    Blank,
    BlankOpt,
    ConfigOpt,
    Context,
    DateOpt,
    HomeOpt,
    ModalityOpt,
    NameOpt,
    app,
    counted,
    err,
    out,
    plural,
    print_table,
    progress,
    run,
)
from node.index.audit import Entry, os_user
from node.index.records import InstanceRecord, State
from node.layout import prediction_name

_PARTS = ("hospital", "patient", "study", "series", "sop instance")
_FILTERS = ("--patient-name", "--study-date", "--modality", "--accession")


class Kind(enum.StrEnum):
    original = "original"
    output = "output"
    preview = "preview"
    description = "description"
    labels = "labels"
    prediction = "prediction"


def nothing_matched(parts: Iterable[str | None], where: Filters, blank: Blank) -> str:
    """"nothing matched the hospital, patient and --accession given": the names of what was
    asked, never the values (a patient's name or ID is not for a log)."""
    given = [name for name, value in zip(_PARTS, parts, strict=False) if value]
    given += [opt for opt, value in zip(_FILTERS, (where.patient_name, where.study_date,
                                                   where.modality, where.accession),
                                        strict=True) if value]
    if blank is not Blank.show:
        given.append(f"--blank {blank.value}")
    if not given:
        return "nothing matched: nothing is stored"
    names = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
    return f"nothing matched the {names} given"


def _date(value: str | None) -> str:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def _number(value: int | None) -> str:
    return "" if value is None else str(value)


def _notes(rec: InstanceRecord, conflicts: set[str]) -> str:
    return " ".join((["BLANK"] if rec.blank else [])
                    + (["CONFLICT"] if rec.sop_uid in conflicts else []))


_READABLE = ("hospital", "patient ID", "name", "date", "mod", "series", "inst", "state", "note")
_CAPS = {"hospital": 16, "patient ID": 12}  # longer ones end in … (--wide shows them whole)


def _readable(records: list[InstanceRecord], conflicts: set[str]) -> Table:
    """Fits the terminal (80 columns and up): a long name or Patient ID is cut short (with
    …), not a date, a number or a state. The hospital column only when there are several
    (the summary names the one), the note column only when there is a note."""
    rows = [dict(zip(_READABLE, (
        rec.hospital, rec.patient_id or "", rec.patient_name or "", _date(rec.study_date),
        rec.modality or "", _number(rec.series_number), _number(rec.instance_number),
        rec.state, _notes(rec, conflicts)), strict=True)) for rec in records]
    headers = [h for h in _READABLE
               if (h != "hospital" or len({r[h] for r in rows}) > 1)
               and (h != "note" or any(r[h] for r in rows))]
    widths = {h: min(max([len(h)] + [len(r[h]) for r in rows]), _CAPS.get(h, 1 << 16))
              for h in headers}
    spare = out.width - 2 * (len(headers) - 1) - sum(widths.values()) + widths["name"]
    widths["name"] = min(widths["name"], max(spare, 4))
    table = Table(box=None, pad_edge=False)
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="ellipsis", max_width=widths[header],
                         justify="right" if header in ("series", "inst") else "left")
    for row in rows:
        table.add_row(*(row[h] for h in headers))
    return table


def _wide(records: list[InstanceRecord], conflicts: set[str]) -> Table:
    """Every UID whole (to give to ``get``), however wide that is."""
    table = Table("hospital", "patient", "study", "series", "sop instance", "modality",
                  "size", "state", "note", "patient ID", "name", "study date", "series #",
                  "inst #", box=None)
    for rec in records:
        table.add_row(rec.hospital, rec.patient_key, rec.study_uid, rec.series_uid,
                      rec.sop_uid, rec.modality or "", str(rec.size), rec.state,
                      _notes(rec, conflicts), rec.patient_id or "", rec.patient_name or "",
                      _date(rec.study_date), _number(rec.series_number),
                      _number(rec.instance_number))
    return table


def summary(records: list[InstanceRecord], conflicts: set[str]) -> str:
    """``6 instances in default: 1 patient, 1 study, 3 series; 1 blank; 2 with
    conflicts`` (``in 2 hospitals`` when there are several)."""
    hospitals = sorted({r.hospital for r in records})
    patients = len({(r.hospital, r.patient_key) for r in records})
    studies = len({(r.hospital, r.study_uid) for r in records})
    series = len({(r.hospital, r.series_uid) for r in records})
    text = plural(len(records), "instance")
    if records:
        where = hospitals[0] if len(hospitals) == 1 else f"{len(hospitals)} hospitals"
        text += (f" in {where}: {plural(patients, 'patient')}, "
                 f"{studies} stud{'y' if studies == 1 else 'ies'}, {series} series")
    blank = sum(1 for r in records if r.blank)
    shown = sum(1 for r in records if r.sop_uid in conflicts)
    return text + (f"; {blank} blank" if blank else "") + \
        (f"; {shown} with conflicts" if shown else "")


def _json_line(node: Node, rec: InstanceRecord, conflicts: set[str]) -> str:
    # sop_instance_uid and state are the keys scripts rely on; sop_uid stays.
    doc = asdict(rec) | {"sop_instance_uid": rec.sop_uid, "state": rec.state,
                         "blank": bool(rec.blank), "received_at": rec.received_at.isoformat()}
    doc["conflicts"] = [asdict(c) | {"received_at": c.received_at.isoformat()}
                        for c in node.conflicts(rec.sop_uid)] \
        if rec.sop_uid in conflicts else []
    return json.dumps(doc)


@app.command()
def ls(hospital: Annotated[str | None, typer.Argument()] = None,
       patient: Annotated[str | None, typer.Argument(help="Pseudonym or Patient ID.")] = None,
       study: Annotated[str | None, typer.Argument()] = None,
       series: Annotated[str | None, typer.Argument()] = None,
       sop: Annotated[str | None, typer.Argument()] = None,
       home: HomeOpt = None, config: ConfigOpt = None,
       wide: Annotated[bool, typer.Option(
           "--wide", help="Also the pseudonym, the study, series and SOP Instance UIDs "
                          "(whole, to give to `get`) and the size: a wide table.")] = False,
       as_json: Annotated[bool, typer.Option(
           "--json", help="One JSON object per line, with every indexed attribute.")] = False,
       patient_name: NameOpt = None, study_date: DateOpt = None, modality: ModalityOpt = None,
       accession: AccessionOpt = None, blank: BlankOpt = Blank.show,
       ) -> None:
    """List stored instances: trailing hierarchy parts left out list everything below;
    the query options narrow it as C-FIND would. The table shows patient ID, name, study
    date, series and instance numbers, state; --wide the UIDs; --json everything."""
    def body() -> None:
        ctx = Context(home, config)
        where = Filters(patient_name, study_date, modality, accession)
        with ctx.node() as node:
            records = list(node.ls(hospital, patient, study, series, sop, where,
                                   _BLANK_CHOICES[blank]))
            conflicts = {c.sop_uid for c in node.conflicts()}
            if as_json:
                for rec in records:
                    print(_json_line(node, rec, conflicts))
        if not records:
            err.print(nothing_matched((hospital, patient, study, series, sop), where, blank),
                      highlight=False)
        if as_json:
            return
        if records:
            if wide:
                print_table(_wide(records, conflicts))
            else:
                out.print(_readable(records, conflicts), highlight=False)
        out.print(summary(records, conflicts), highlight=False)
    run(body)


_NO_PIXELS = (State.NOT_IMAGE, State.LABELS)
_OPTIONAL = (Kind.labels, Kind.prediction)  # an image without one is not a failure


@app.command()
def get(hospital: Annotated[str, typer.Argument()],
        patient: Annotated[str | None, typer.Argument(help="Pseudonym or Patient ID.")] = None,
        study: Annotated[str | None, typer.Argument()] = None,
        series: Annotated[str | None, typer.Argument()] = None,
        sop: Annotated[str | None, typer.Argument()] = None,
        out_dir: Annotated[Path, typer.Option("--out", help="Folder to write into.")] = Path("."),
        home: HomeOpt = None, config: ConfigOpt = None,
        patient_name: NameOpt = None, study_date: DateOpt = None, modality: ModalityOpt = None,
        accession: AccessionOpt = None, blank: BlankOpt = Blank.show,
        kind: Annotated[Kind, typer.Option(
            help="original (.dcm), output (.npy, the AI input), preview (.png), "
                 "description (.json), labels (.labels.npy, the label map at the "
                 "original's size) or prediction (.prediction-ARCH-VERSION.npy, a "
                 "library model's label map; --model picks one).")] = Kind.original,
        model: Annotated[str | None, typer.Option(
            help="With --kind prediction: only this library model's, e.g. unet/2.")] = None,
        ) -> None:
    """Decrypt objects below a hierarchy prefix (and matching the query options) to files
    under --out: the Part-10 originals by default, or the outputs, previews, descriptions,
    label maps or predictions."""
    def body() -> None:
        ctx = Context(home, config)
        where = Filters(patient_name, study_date, modality, accession)
        if model is not None and kind is not Kind.prediction:
            raise _usage("--model goes with --kind prediction")
        name = prediction_name(model) if model else None
        with ctx.node() as node:
            records = list(node.ls(hospital, patient, study, series, sop, where,
                                   _BLANK_CHOICES[blank]))
            if not records:
                err.print(nothing_matched((hospital, patient, study, series, sop), where,
                                          blank), highlight=False)
            copies, written = 0, 0
            missing: Counter[str] = Counter()
            with progress() as bar:
                task = bar.add_task("decrypting", total=len(records))
                for rec in records:
                    try:
                        written += _export(node, rec, out_dir, kind, name)
                    except FileNotFoundError:  # outputs of an instance not processed
                        missing[rec.state] += 1
                    if kind is Kind.original:
                        # Same UID, other bytes: beside it as {sop}.conflict-{sha256[:12]}.dcm.
                        copies += len(node.export_conflicts(rec, out_dir))
                    bar.advance(task)
            if node.core.audit is not None and records:
                node.core.audit.record(Entry(
                    "export", "cli", os_user(), f"{written} files written", hospital, study,
                    series, sop, written, f"{kind.value} to a folder"))
        note = f" and {copies} conflict copies" if copies else ""
        out.print(f"wrote {written} files{note} under {out_dir}", highlight=False)
        _report_missing(missing, kind)
    run(body)


def _usage(message: str) -> typer.Exit:
    from node.cli.common import ExitCode, fail
    return fail(message, ExitCode.USAGE)


def _export(node: Node, rec: InstanceRecord, out_dir: Path, kind: Kind,
            prediction: str | None) -> int:
    """Writes one instance's object(s) of ``kind``; returns how many files. Raises
    FileNotFoundError when it has none."""
    if kind is Kind.prediction:
        written = node.export_predictions(rec, out_dir, prediction)
        if not written:
            raise FileNotFoundError(rec.sop_uid)
        return len(written)
    if kind is Kind.labels and rec.labels is None:
        raise FileNotFoundError(rec.sop_uid)  # asked of the index, not the store
    node.export(rec, out_dir, kind.value)
    return 1


def _report_missing(missing: Counter[str], kind: Kind) -> None:
    """A SEG or a report has no output or preview by nature, an image may have no label
    map or prediction yet: said, not a failure. An image without its output is one."""
    natural = Counter({k: n for k, n in missing.items() if k in _NO_PIXELS})
    if natural:
        err.print(f"skipped {plural(sum(natural.values()), 'instance')} with no pixels to "
                  f"derive from ({counted(natural, '')})", highlight=False)
    lacking = missing - natural
    if not lacking:
        return
    n = sum(lacking.values())
    what = {Kind.labels: "label map", Kind.prediction: "prediction"}.get(kind, kind.value)
    err.print(f"{plural(n, 'instance')} {'has' if n == 1 else 'have'} no {what} "
              f"({counted(lacking, '')})", highlight=False)
    if kind not in _OPTIONAL:
        raise typer.Exit(1)
