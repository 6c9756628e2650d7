"""The data commands: init, serve, import, verify, reindex, worker, status,
reprocess, labels."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from node.api import Node
from node.cli.common import (
    ConfigOpt,
    Context,
    HomeOpt,
    app,
    counted,
    err,
    fail,
    labels_app,
    out,
    progress,
    run,
)
from node.cli.home import check_new_keys, require_home
from node.errors import ConfigError, IngestError, NodeError
from node.index import series_watch
from node.index.records import State
from node.ingest import Source
from node.settings import valid_hospital
from node.wiring import ensure_keyring


@app.command()
def init(home: HomeOpt = None, config: ConfigOpt = None,
         bits: Annotated[int | None, typer.Option(help="AES key size, 128 or 256.")] = None,
         ) -> None:
    """Create the home folder, the key file (mode 0600) and the index."""
    def body() -> None:
        overrides = {"keys": {"bits": bits}} if bits else None
        ctx = Context(home, config, overrides)
        existed = ctx.settings.keys.file.exists()
        check_new_keys(ctx.settings)  # a home with data but no key file: never a new key
        ensure_keyring(ctx.settings)
        ctx.node().close()
        state = "kept the existing" if existed else "created"
        out.print(f"{state} key file {ctx.settings.keys.file}")
        out.print(f"store: {ctx.settings.store.url}")
    run(body)


@app.command()
def serve(home: HomeOpt = None, config: ConfigOpt = None,
          host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
          dimse_port: Annotated[int | None, typer.Option(help="DIMSE port.")] = None,
          ae_title: Annotated[str | None, typer.Option(help="This node's AE title.")] = None,
          workers: Annotated[int | None, typer.Option(
              help="Receiving processes sharing the port.")] = None,
          processing_workers: Annotated[int | None, typer.Option(
              help="Processes preprocessing stored images (0: leave it to "
                   "`support-node worker`).")] = None,
          http_port: Annotated[int | None, typer.Option(
              help="HTTP port of DICOMweb, /healthz and /metrics (0: any free port).")] = None,
          init: Annotated[bool, typer.Option(
              "--init", help="Create the home (key file, index, store) first when it has "
                             "none, as `support-node init` does.")] = False,
          ) -> None:
    """Run the node: DIMSE Verification, Storage and Query/Retrieve SCP, DICOMweb (STOW-RS,
    QIDO-RS, WADO-RS) with /healthz and /metrics, and the processing workers, until Ctrl-C
    or SIGTERM. The home must be one `init` made, unless --init is given."""
    from node import processes

    def body() -> None:
        ctx = Context(home, config, {"dimse": {"host": host, "port": dimse_port,
                                              "ae_title": ae_title, "workers": workers},
                                    "processing": {"workers": processing_workers},
                                    "http": {"port": http_port}},
                      service=True)
        settings = ctx.settings
        require_home(settings, init, "serve")  # a mistyped --home is not a new node
        # Create the key file and the index tables once, before any worker races to.
        with ctx.node(create_keys=init) as node:
            web = settings.http.enabled
            if web and not settings.http.anonymous_allowed and not node.core.tokens.any_active():
                raise ConfigError(
                    f"http.host: serving {settings.http.host} with no token; create one "
                    "(support-node tokens create NAME) or set http.allow_anonymous = true")

        def ready(port: int, url: str | None) -> None:
            d = settings.dimse
            extra = f" ({d.workers} workers)" if d.workers > 1 else ""
            http = f"HTTP on {url}, " if url else ""
            out.print(f"support-node {d.ae_title} ready: DIMSE on {d.host}:{port}{extra}, "
                      f"{http}"
                      f"{settings.processing.workers} processing worker"
                      f"{'' if settings.processing.workers == 1 else 's'}, "
                      f"store {settings.store.url}", highlight=False)
            if url:
                from node.web.viewer import find_viewer

                root = url.rsplit("/dicom-web", 1)[0]
                found = find_viewer(settings.http)
                ohif = (f"OHIF at {root}/" if found else
                        "OHIF not served (" + ("http.viewer = false" if not settings.http.viewer
                                               else "not installed: make viewer, needs npm")
                        + ")")
                out.print(f"AI page at {root}/ui/, {ohif}", highlight=False)
            sys.stdout.flush()

        try:
            with processes.ProcessingPool(settings) as pool:
                if settings.dimse.workers > 1:
                    processes.serve_workers(settings, ready, watch=pool.check, web=web)
                else:
                    processes.serve_one(settings, ready, watch=pool.check, web=web)
        except OSError as exc:
            d = settings.dimse
            raise fail(f"cannot listen on {d.host}:{d.port} (DIMSE) or {settings.http.host}:"
                       f"{settings.http.port} (HTTP): {exc.strerror or exc}", 3) from None
        out.print("stopped")
    run(body)


def _dicom_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _looks_like_dicom(data: bytes) -> bool:
    """A Part-10 file ("DICM" after the preamble), or a bare data set that starts with a
    file meta or identifying element (group 0002 or 0008, either byte order)."""
    if data[128:132] == b"DICM":
        return True
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x08")


@app.command("import")
def import_(paths: Annotated[list[Path], typer.Argument(help="Files or folders of DICOM.")],
            home: HomeOpt = None, config: ConfigOpt = None,
            hospital: Annotated[str, typer.Option(help="Hospital to file them under.")] = "default",
            ) -> None:
    """Store DICOM files through the same ingest path as C-STORE, byte for byte."""
    def body() -> None:
        ctx = Context(home, config)
        if not valid_hospital(hospital):
            raise fail(f"--hospital {hospital!r}: use lower-case letters, digits, "
                       "'.', '_', '-' (it names a folder of the store)", 2)
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise fail(f"no such file or folder: {', '.join(missing)}", 2)
        files = list(_dicom_files(paths))
        counts: Counter[str] = Counter()
        refused: list[tuple[Path, str]] = []
        with ctx.node(create_keys=True) as node, progress() as bar:
            task = bar.add_task("importing", total=len(files))
            for path in files:
                data = path.read_bytes()
                if not _looks_like_dicom(data):
                    counts["refused"] += 1
                    refused.append((path, "not a DICOM file (no DICM preamble, and it does "
                                          "not start with a DICOM element)"))
                    bar.advance(task)
                    continue
                try:
                    result = node.core.ingest.accept(
                        data, Source(hospital=hospital, via="import"))
                    counts[result.outcome.value] += 1
                except IngestError as exc:
                    counts["refused"] += 1
                    refused.append((path, str(exc)))
                bar.advance(task)
        for path, why in refused:
            err.print(f"refused {path}: {why}", highlight=False)
        out.print(f"imported {len(files)} files: {counted(counts, 'nothing')}")
        if refused:
            raise typer.Exit(1)
    run(body)


@app.command()
def verify(home: HomeOpt = None, config: ConfigOpt = None,
           repair: Annotated[bool, typer.Option(
               "--repair", help="Index folders that have no index row (or quarantine them), "
                                "drop rows whose objects are gone, remove stale temporary "
                                "files.")] = False) -> None:
    """Decrypt and hash every object; hold the store against the index (folders without a
    row, rows without objects, stale temporary files). Exit 1 if anything is wrong (after
    --repair: if anything is left)."""
    from node import consistency
    from node.store.modes import warn_exposed

    def body() -> None:
        ctx = Context(home, config)
        warn_exposed(ctx.settings)
        problems = []
        with ctx.node() as node:
            keys = node.objects()
            found = consistency.check(node.core, keys)
            fixed = None
            if repair:  # first, so that what it sets aside is not reported below
                fixed = consistency.repair(node.core, found, keys,
                                           lambda line: out.print(line, highlight=False))
                keys = node.objects()
            with progress() as bar:
                task = bar.add_task("verifying", total=len(keys))
                for key in keys:
                    problem = node.verify_object(key)
                    if problem:
                        problems.append(problem)
                    bar.advance(task)
        for p in problems:
            err.print(f"FAILED {p.key}: {p.error}", highlight=False)
        out.print(f"verified {len(keys)} objects: {len(keys) - len(problems)} ok, "
                  f"{len(problems)} failed")
        left = _report_consistency(found, fixed)
        if problems or left:
            raise typer.Exit(1)
    run(body)


def _report_consistency(found: Any, fixed: Any) -> int:
    """Prints what ``consistency.check`` found (and ``repair`` did); returns how many
    problems are left."""
    for folder in found.unindexed:
        err.print(f"NOT INDEXED {folder}", highlight=False)
    for row in found.missing:
        err.print(f"MISSING {row.folder} (indexed as {row.sop_uid})", highlight=False)
    for rel in found.temp_files:
        err.print(f"STALE TEMPORARY FILE {rel}", highlight=False)
    for folder in found.recent:
        out.print(f"not indexed yet (received in the last few minutes, left alone): {folder}",
                  highlight=False)
    out.print(f"index: {len(found.unindexed)} folders without an index row, "
              f"{len(found.missing)} rows without their objects, "
              f"{len(found.temp_files)} stale temporary files")
    if fixed is None:
        return len(found.unindexed) + len(found.missing) + len(found.temp_files)
    if fixed.refused:
        err.print(f"not repaired: {fixed.refused}", highlight=False)
    out.print(f"repaired: {len(fixed.indexed)} indexed, {len(fixed.quarantined)} quarantined, "
              f"{len(fixed.rows_removed)} rows removed, {fixed.temp_removed} temporary files "
              "removed")
    return (len(found.missing) - len(fixed.rows_removed)
            + len(found.temp_files) - fixed.temp_removed)


@app.command()
def reindex(home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Rebuild the index from the stored descriptions alone."""
    def body() -> None:
        ctx = Context(home, config)
        counts: Counter[str] = Counter()
        with ctx.node() as node:
            from node.index.spooled import SpooledRows

            waiting, _ = SpooledRows(node.core.catalog).totals()
            if waiting:  # the store does not hold them yet: a rebuild would drop them
                raise fail(f"{waiting} objects still wait in a node's spool for upload; "
                           "start the node (serve) until `support-node status` shows none, "
                           "then reindex", 1)
            keys = node.descriptions()
            node.core.catalog.clear()
            with progress() as bar:
                task = bar.add_task("reindexing", total=len(keys))
                for key in keys:
                    try:
                        counts[node.reindex_entry(key)] += 1
                    except (NodeError, ValueError, KeyError) as exc:
                        counts["failed"] += 1
                        err.print(f"could not index {key}: {exc}", highlight=False)
                    bar.advance(task)
            # The series were complete before: the series watch must not segment the whole
            # archive again as if each had just arrived.
            series_watch.mark_all_complete(node.core.catalog, datetime.now(UTC))
        out.print(f"reindexed: {counted(counts, 'nothing stored')}")
        if counts["failed"]:
            raise typer.Exit(1)
    run(body)


@app.command()
def worker(home: HomeOpt = None, config: ConfigOpt = None,
           once: Annotated[bool, typer.Option(
               "--once", help="Process what is queued, then exit.")] = False,
           kinds: Annotated[str, typer.Option(
               help="Jobs to take: any of process, segment, pretrain (comma-separated).")
           ] = "process,segment,pretrain") -> None:
    """Take jobs (preprocessing and the blank filter; segmentation and pretraining) until
    Ctrl-C or SIGTERM; any number of workers, on any host sharing the index and store, can
    run at once."""
    def body() -> None:
        from node.processing.worker import KINDS, Worker

        chosen = tuple(k.strip() for k in kinds.split(",") if k.strip())
        if not chosen or set(chosen) - set(KINDS):
            raise fail(f"--kinds {kinds!r}: any of {', '.join(KINDS)}", 2)
        ctx = Context(home, config, service=not once)
        with ctx.node() as node:
            if once:
                _drain(node, "processing", chosen)
                return
            from threadpoolctl import threadpool_limits

            from node import processes
            out.print(f"support-node worker ready ({', '.join(chosen)})", highlight=False)
            sys.stdout.flush()
            with threadpool_limits(limits=1):  # one worker, one core (see service.py)
                Worker(node.core, kinds=chosen).run(processes.stop_event())
        out.print("stopped")
    run(body)


def _drain(node: Node, what: str, kinds: tuple[str, ...] | None = None) -> None:
    """Processes the queue in this process, with a progress bar; exit 1 if any failed."""
    from node.processing.worker import KINDS, Worker

    work = Worker(node.core, kinds=kinds or KINDS)
    with progress() as bar:
        task = bar.add_task(what, total=work.queue.counts().queue_depth)
        counts = work.drain(lambda _state: bar.advance(task))
    left = work.queue.counts().queue_depth
    if not counts and left and (kinds is None or set(kinds) >= set(KINDS)):
        # Another process (serve's workers, `support-node worker`) holds the jobs.
        out.print(f"{what}: {left} jobs are being worked on by the node's running workers "
                  "(serve, or support-node worker); `support-node status` shows the queue "
                  "going down", highlight=False)
        return
    out.print(f"{what}: {counted(counts, 'nothing queued')}", highlight=False)
    if counts["failed"] or counts["retry"]:
        for sop_uid, error in work.queue.failures():
            err.print(f"failed {sop_uid}: {error}", highlight=False)
        raise typer.Exit(1)


def _wait_for_queue(queue: Any, spooled: Any, timeout: float) -> bool:
    """Polls until no job is queued or running and nothing waits in a spool for upload,
    or ``timeout`` runs out. True: empty. A job waiting on another (a segmentation waiting
    for its images) counts as queued."""
    import time

    end = time.monotonic() + timeout
    while queue.counts().queue_depth or spooled.totals()[0]:
        if time.monotonic() >= end:
            return False
        time.sleep(0.5)
    return True


_WHAT_FAILED = {"process": "processing", "segment": "segmentation of series",
                "pretrain": "pretraining"}


@app.command()
def status(home: HomeOpt = None, config: ConfigOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="As one JSON object.")] = False,
           wait: Annotated[bool, typer.Option(
               "--wait", help="First wait until the queue is empty (the running workers "
                              "are done) and the spool is uploaded, at most --timeout "
                              "seconds.")] = False,
           timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")
                              ] = 600.0,
           ) -> None:
    """Processing queue depth; how many instances were processed, flagged blank, described
    only, or failed; segmentation and pretraining jobs that failed, with their reasons;
    what waits in the spool for upload to the store."""
    from node.index.jobs import JobQueue
    from node.index.spooled import SpooledRows

    def body() -> None:
        ctx = Context(home, config)
        with ctx.node() as node:
            queue = JobQueue(node.core.catalog)
            spooled = SpooledRows(node.core.catalog)
            if wait and not _wait_for_queue(queue, spooled, timeout):
                raise fail(f"the queue or the spool is not empty after {timeout:g} s: are "
                           "the workers and the node running (serve, or support-node "
                           "worker)?", 1)
            spool_objects, spool_bytes = spooled.totals()
            counts = queue.counts()
            failures = queue.failed_jobs(8)
            stored = node.core.catalog.counts()["instances"]
            pressure = node.core.pressure.state() if node.core.pressure else None
        states = {state: counts.instances.get(state, 0) for state in State.ALL}
        failed = counts.failed_jobs
        doc = {"instances": stored, "queue_depth": counts.queue_depth,
               "running": counts.jobs.get("running", 0), **states,
               "filtered": counts.blank, "labelled": counts.labelled,
               "failed_segment": failed.get("segment", 0),
               "failed_pretrain": failed.get("pretrain", 0),
               "errors": [{"kind": k, "target": t, "error": e} for k, t, e in failures],
               "recipe": ctx.settings.recipe().recipe_id,
               "accepting": None if pressure is None else pressure.as_dict(),
               "spool": {"objects": spool_objects, "bytes": spool_bytes}}
        if as_json:
            print(json.dumps(doc))
            return
        table = Table("", "", box=None)
        for label, value in (("instances", stored), ("queue depth", counts.queue_depth),
                             ("  of which running", doc["running"]),
                             ("processed", states[State.PROCESSED]),
                             ("  flagged blank (filtered)", counts.blank),
                             ("  with a label map", counts.labelled),
                             ("not images (described only)", states[State.NOT_IMAGE]),
                             ("undecodable", states[State.UNDECODABLE]),
                             ("DICOM SEG read as labels", states[State.LABELS]),
                             ("failed", states[State.FAILED]),
                             ("segmentations failed", doc["failed_segment"]),
                             ("pretrainings failed", doc["failed_pretrain"]),
                             ("objects waiting in the spool for upload", spool_objects)):
            table.add_row(label, str(value))
        out.print(table)
        out.print(f"default recipe: {doc['recipe']}", highlight=False)
        if pressure is not None:
            out.print("accepting new instances: " + (
                "yes" if pressure.ok else f"no, for now: {pressure.reason}"), highlight=False)
        for kind, target, error in failures:
            what = _WHAT_FAILED.get(kind, kind)
            err.print(f"failed: {what}{'' if kind == 'pretrain' else ' ' + target}: {error}",
                      highlight=False)
    run(body)


@app.command()
def reprocess(hospital: Annotated[str | None, typer.Argument()] = None,
              patient: Annotated[str | None, typer.Argument(
                  help="Pseudonym or Patient ID.")] = None,
              study: Annotated[str | None, typer.Argument()] = None,
              series: Annotated[str | None, typer.Argument()] = None,
              sop: Annotated[str | None, typer.Argument()] = None,
              recipe: Annotated[str | None, typer.Option(
                  help="A \\[recipes.NAME] section of the config (default: "
                       "processing.recipe).")] = None,
              queue_only: Annotated[bool, typer.Option(
                  "--queue-only", help="Only queue the jobs, for the running workers.")] = False,
              home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Derive the outputs of stored images again (below a hierarchy prefix, or all) with a
    recipe; originals are never touched."""
    from node.index.jobs import JobQueue

    def body() -> None:
        ctx = Context(home, config)
        chosen = ctx.settings.recipe(recipe)
        with ctx.node() as node:
            uids = (rec.sop_uid for rec in node.ls(hospital, patient, study, series, sop))
            queued = JobQueue(node.core.catalog).requeue(
                uids, json.dumps(chosen.to_mapping()))
            if not queued:
                raise fail("nothing stored under that hierarchy", 1)
            out.print(f"queued {queued} instances with recipe {chosen.recipe_id}",
                      highlight=False)
            if not queue_only:
                _drain(node, "reprocessing")
    run(body)


@labels_app.command("import")
def labels_import(folder: Annotated[Path, typer.Argument(
                      help="A folder of {SOP Instance UID}.png / .npy masks.")],
                  home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Import masks named by SOP Instance UID as the label maps of stored images (PNG 0/255
    is taken as 0/1; other values are class numbers). Exit 1 if any was refused."""
    from node.ai import labels

    def body() -> None:
        ctx = Context(home, config)
        if not folder.is_dir():
            raise fail(f"no such folder: {folder}", 2)
        with ctx.node() as node:
            counts, problems = labels.import_folder(node.core, folder)
        for problem in problems:
            err.print(problem, highlight=False)
        out.print(f"labels: {counted(counts, 'no mask files')}")
        if problems:
            raise typer.Exit(1)
    run(body)
