"""OHIF served by the node: time to first image and scroll rate through a CT series.

    .venv/bin/python bench/viewer_bench.py [--slices 200] [--size 512]

Stores a generated CT series, opens it in OHIF (the build ``make viewer`` fetched) in
Debian's chromium (headless, software WebGL), and reads OHIF's own timers
(``studyToFirstImage``); then scrolls through every slice with the arrow key, one press
after the viewport shows the previous slice, and reports slices per second. Whole-run
figures on this machine; nothing leaves 127.0.0.1.

Not here yet: the same against Orthanc with its DICOMweb plugin (OHIF would have to reach
it cross-origin, which its cross-origin isolation forbids without CORP headers Orthanc does
not send).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from node import wiring  # noqa: E402
from node.api import Node  # noqa: E402
from node.settings import load  # noqa: E402
from node.web.viewer import find_viewer  # noqa: E402
from pipelines import synthetic  # noqa: E402
from tests.fixtures.browser import ARGS, CHROMIUM  # noqa: E402

console = Console()
TIMER = re.compile(r"studyToFirstImage: ([\d.]+) ms")
SLICE = re.compile(r"I:\s*(\d+)\s*\((\d+)/(\d+)\)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    settings = load(home=Path(tempfile.mkdtemp(prefix="viewer-bench-")) / "home", environ={},
                    overrides={"http": {"port": 0}})
    if find_viewer(settings.http) is None:
        console.print("OHIF is not installed (make viewer): nothing to measure")
        return 1
    node = Node.from_settings(settings, create_keys=True)
    patient = synthetic.Patient("BENCH-V", "Viewer^Bench")
    study = ""
    for ds in synthetic.ct_series(args.slices, size=args.size, patient=patient, seed=5):
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        node.write(out.getvalue())
        study = ds.StudyInstanceUID
    web = wiring.start_web(node.core, port=0)
    root = web.url.rsplit("/dicom-web", 1)[0]
    timers: list[float] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
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
            viewport = page.locator('[data-cy="viewport-pane"]').first
            viewport.click()
            started = time.perf_counter()
            for target in range(2, args.slices + 1):
                page.keyboard.press("ArrowDown")
                page.wait_for_function(
                    f"() => /\\(({target}|{args.slices - target + 1})\\/{args.slices}\\)/"
                    ".test(document.body.innerText)", timeout=30_000)
            scroll = (args.slices - 1) / (time.perf_counter() - started)
            browser.close()
    finally:
        web.shutdown()
        node.close()
    table = Table(title=f"OHIF on support-node: {args.slices} CT slices of {args.size}²")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("time to first image (OHIF's studyToFirstImage)",
                  f"{timers[0] / 1000:.2f} s" if timers else "not reached")
    table.add_row("page open to first image (whole)", f"{load_seconds:.2f} s")
    table.add_row("scroll rate, one key press per shown slice", f"{scroll:.1f} slices/s")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
