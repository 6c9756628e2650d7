"""OHIF on the node beside OHIF on Orthanc: time to first image and scroll rate through a
CT series.

    .venv/bin/python bench/viewer_bench.py [--slices 200] [--size 512] [--no-orthanc]

Stores a generated CT series in the node, and the same files in Orthanc with its DICOMweb
plugin (Debian's ``orthanc`` + ``orthanc-dicomweb``; left out with a note when missing).
Opens it in the same OHIF build (``make viewer``) in Debian's chromium (headless, software
WebGL), reads OHIF's own timer (``studyToFirstImage``), then scrolls through every slice with
the arrow key, one press after the viewport shows the previous slice.

Three columns: the node serving OHIF itself (how it runs), and the node and Orthanc each
behind the same small same-origin server (``bench/same_origin.py``): OHIF's cross-origin
isolation cannot read Orthanc on another origin, and putting both behind one forwarder
makes the comparison fair. Whole-run figures on this machine; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import receivers  # noqa: E402
from bench.same_origin import SameOrigin  # noqa: E402
from bench.web_bench import DICOMWEB_PLUGIN, OrthancWeb, wait_http  # noqa: E402
from node import wiring  # noqa: E402
from node.api import Node  # noqa: E402
from node.settings import load  # noqa: E402
from node.web.viewer import find_viewer  # noqa: E402
from pipelines import synthetic  # noqa: E402
from tests.fixtures.browser import ARGS, CHROMIUM  # noqa: E402

console = Console(width=130)
TIMER = re.compile(r"studyToFirstImage: ([\d.]+) ms")
SLICE = re.compile(r"I:\s*(\d+)\s*\((\d+)/(\d+)\)")


@dataclass
class Viewed:
    first_image: float | None  # OHIF's studyToFirstImage, seconds
    page_to_image: float  # page open to that timer, whole
    scroll: float  # slices per second


def view(root: str, study: str, slices: int) -> Viewed:
    """Opens ``study`` in the OHIF at ``root`` and measures it (a fresh browser each time:
    nothing cached from the previous column)."""
    from playwright.sync_api import sync_playwright

    timers: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900},
                                       service_workers="block").new_page()

            def on_console(message: object) -> None:
                found = TIMER.search(str(getattr(message, "text", "")))
                if found:
                    timers.append(float(found.group(1)))

            page.on("console", on_console)
            started = time.perf_counter()
            page.goto(f"{root}/viewer?StudyInstanceUIDs={study}")
            while not timers and time.perf_counter() - started < 120:
                page.wait_for_timeout(100)
            load_seconds = time.perf_counter() - started
            skip = page.get_by_text("Skip all")
            if skip.count():
                skip.first.click()
            page.locator('[data-cy="viewport-pane"]').first.click()
            started = time.perf_counter()
            for target in range(2, slices + 1):
                page.keyboard.press("ArrowDown")
                page.wait_for_function(
                    f"() => /\\(({target}|{slices - target + 1})\\/{slices}\\)/"
                    ".test(document.body.innerText)", timeout=30_000)
            scroll = (slices - 1) / (time.perf_counter() - started)
        finally:
            browser.close()
    return Viewed(timers[0] / 1000 if timers else None, load_seconds, scroll)


def write_series(folder: Path, slices: int, size: int) -> str:
    patient = synthetic.Patient("BENCH-V", "Viewer^Bench")
    study = ""
    for i, ds in enumerate(synthetic.ct_series(slices, size=size, patient=patient, seed=5)):
        ds.save_as(folder / f"{i:04d}.dcm", enforce_file_format=True)
        study = ds.StudyInstanceUID
    return study


def orthanc_column(files: list[Path], viewer: Path, study: str,
                   slices: int) -> tuple[Viewed | None, str]:
    found, note = receivers.ensure_orthanc()
    if not found or not Path(DICOMWEB_PLUGIN).exists():
        return None, note or "Orthanc's DICOMweb plugin is not installed (orthanc-dicomweb)"
    orthanc = OrthancWeb()
    orthanc.start()
    try:
        wait_http(orthanc.url)
        base = orthanc.url.rsplit("/dicom-web", 1)[0]
        with requests.Session() as http:
            for path in files:
                http.post(f"{base}/instances", data=path.read_bytes(),
                          timeout=60).raise_for_status()
        proxy = SameOrigin(viewer, base)
        try:
            return view(proxy.url, study, slices), note
        finally:
            proxy.close()
    finally:
        orthanc.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--no-orthanc", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    settings = load(home=work / "home", environ={}, overrides={"http": {"port": 0}})
    viewer = find_viewer(settings.http)
    if viewer is None:
        console.print("OHIF is not installed (make viewer): nothing to measure")
        return 1
    (work / "files").mkdir()
    study = write_series(work / "files", args.slices, args.size)
    files = sorted((work / "files").glob("*.dcm"))
    columns: dict[str, Viewed | None] = {}
    node = Node.from_settings(settings, create_keys=True)
    for path in files:
        node.write(path.read_bytes())
    web = wiring.start_web(node.core, port=0)
    try:
        root = web.url.rsplit("/dicom-web", 1)[0]
        columns["node (serves OHIF)"] = view(root, study, args.slices)
        proxy = SameOrigin(viewer, root)
        try:
            columns["node, same-origin"] = view(proxy.url, study, args.slices)
        finally:
            proxy.close()
    finally:
        web.shutdown()
        node.close()
    note = "left out (--no-orthanc)"
    if not args.no_orthanc:
        columns["Orthanc, same-origin"], note = orthanc_column(files, viewer, study,
                                                               args.slices)

    table = Table(title=f"OHIF {viewer.name}: {args.slices} CT slices of {args.size}²")
    table.add_column("figure")
    for name in columns:
        table.add_column(name, justify="right")
    table.add_column("node / Orthanc", justify="right")
    got = [c for c in columns.values()]
    fair = columns.get("node, same-origin")
    other = columns.get("Orthanc, same-origin")

    def cells(fn: Callable[[Viewed], float | None], fmt: str) -> list[str]:
        return [fmt.format(v) if c is not None and (v := fn(c)) is not None else "—"
                for c in got]

    def ratio(fn: Callable[[Viewed], float | None], lower_better: bool) -> str:
        a = fn(fair) if fair else None
        b = fn(other) if other else None
        if not a or not b:
            return "—"
        return f"{(b / a if lower_better else a / b):.2f}×"

    table.add_row("time to first image (studyToFirstImage)",
                  *cells(lambda v: v.first_image, "{:.2f} s"),
                  ratio(lambda v: v.first_image, True))
    table.add_row("page open to first image (whole)",
                  *cells(lambda v: v.page_to_image, "{:.2f} s"),
                  ratio(lambda v: v.page_to_image, True))
    table.add_row("scroll rate, a key press per shown slice",
                  *cells(lambda v: v.scroll, "{:.1f} /s"), ratio(lambda v: v.scroll, False))
    console.print(table)
    console.print("node / Orthanc compares the two same-origin columns; above 1× the node "
                  "is faster (the target: at least Orthanc's figures).")
    if note and other is None:
        console.print(f"Orthanc: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
