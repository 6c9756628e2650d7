"""The AI page in a real browser: choose a series that came in by C-STORE, choose a model
trained here, run it, see the lesion marked where it is, find the new SEG series, send it
to a PACS. Nothing may be fetched from outside 127.0.0.1."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from node import wiring
from node.api import Node
from node.cli import app
from node.processing.worker import AI_KINDS, Worker
from pipelines import dicom_seg, phantoms, synthetic
from tests.fixtures.node import free_port, make_settings

SIZE, SLICES, TRAIN_PATIENTS = 64, 10, 6
# Training the fixture's U-Net takes about a minute on two cores (validation Dice ~0.8).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _encode(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, dcmtk) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """A node (DIMSE + HTTP) with a trained U-Net, a token, a PACS to send to, and one new
    phantom series with lesions that a modality sent by C-STORE."""
    base = tmp_path_factory.mktemp("ai-page")
    pacs_port, pacs_dir = free_port(), base / "pacs"
    pacs_dir.mkdir()
    pacs = subprocess.Popen([sys.executable, "-m", "pynetdicom", "storescp", "-ba",
                             "127.0.0.1", "-aet", "PACS", "-od", str(pacs_dir), str(pacs_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    home = base / "home"
    settings = make_settings(home, {
        "dimse": {"host": "127.0.0.1", "port": 0},
        "recipes": {"ct": {"size": SIZE, "window": [40, 400]}},
        "processing": {"recipe": "ct"},
        "destinations": {"PACS": {"host": "127.0.0.1", "port": pacs_port}}})
    config = str(home.parent / "home.toml")
    data = phantoms.phantoms(SLICES * (TRAIN_PATIENTS + 1), size=SIZE, seed=7)
    node = Node.from_settings(settings, create_keys=True)
    for p in range(TRAIN_PATIENTS):  # labelled: images and their SEG, as an annotation tool
        part = slice(SLICES * p, SLICES * (p + 1))
        images, seg = synthetic.labelled_series(
            data.hu[part], data.lesion[part], synthetic.Patient(f"TRAIN-{p}", f"Train^{p}"))
        for ds in images:
            node.write(_encode(ds))
        node.write(dicom_seg.encode(seg))
    Worker(node.core).drain()
    trained = CliRunner().invoke(app, [
        "train", "--arch", "unet", "--init", "none", "--epochs", "60", "--features",
        "8,16,32", "--batch-size", "8", "--lr", "0.003", "--val-fraction", "0.2",
        "--home", str(home), "--config", config])
    assert trained.exit_code == 0, trained.output
    print(trained.output[-600:])
    token = CliRunner().invoke(app, ["tokens", "create", "radiology", "--scope", "readwrite",
                                     "--home", str(home)]).output.strip().splitlines()[-1]
    scp = wiring.start_dimse(node.core)
    web = wiring.start_web(node.core, port=0)
    # the new series: a modality sends it by C-STORE; processed like any arrival
    part = slice(SLICES * TRAIN_PATIENTS, SLICES * (TRAIN_PATIENTS + 1))
    images, _ = synthetic.labelled_series(data.hu[part], data.lesion[part],
                                          synthetic.Patient("NEW-1", "Newcomer^Nina"))
    files = [synthetic.write(ds, base / "send") for ds in images]
    sent = dcmtk("storescu", "-aec", "SUPPORT_NODE", "127.0.0.1",
                 str(scp.server_address[1]), *map(str, files))
    assert sent.returncode == 0, sent.stderr
    Worker(node.core).drain()
    stop = threading.Event()  # the AI worker serve would run: it takes the page's jobs
    ai = threading.Thread(target=Worker(node.core, kinds=AI_KINDS).run, args=(stop,),
                          daemon=True)
    ai.start()
    yield {"node": node, "root": web.url.rsplit("/dicom-web", 1)[0], "token": token,
           "images": images, "lesion": data.lesion[part], "pacs": pacs_dir}
    stop.set()
    ai.join(30)
    web.shutdown()
    scp.shutdown()
    node.close()
    pacs.terminate()
    pacs.wait(10)


def _open_series(page: Any, root: str, token: str) -> None:
    page.goto(root + "/ui/")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    _step(page, page.get_by_role("button", name="default"), "Patients")
    _step(page, page.get_by_role("button", name="Newcomer^Nina (NEW-1)"), "Studies")
    _step(page, page.locator("#list button").first, "Series")  # the study
    page.locator("#list button", has_text="CT").first.click()  # the CT series
    page.wait_for_selector("#grid figure")


def _step(page: Any, button: Any, level: str) -> None:
    """Click a list entry and wait until the page shows the next level, as a person waits
    for the list to change before clicking in it again."""
    button.click()
    page.wait_for_function(
        "level => document.querySelector('#crumbs li:last-child button')?.textContent === level"
        " && document.querySelectorAll('#list button').length > 0", arg=level)


def _canvas(page: Any) -> np.ndarray:
    shot = page.locator("#view").screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)


def test_run_a_model_see_the_lesion_send_the_seg(site: dict[str, Any], watched_page,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    page = watched_page.page
    _open_series(page, site["root"], site["token"])
    assert page.locator("#grid figure").count() == SLICES
    page.wait_for_selector("#model option[value='unet/1']", state="attached")
    assert "validation Dice" in page.locator("#card").inner_text()
    page.get_by_role("button", name="Run on series").click()
    page.wait_for_function("document.getElementById('job').textContent.includes('done')",
                           timeout=120_000)

    # go to the slice with the largest lesion, with the keyboard
    lesion = site["lesion"]
    target = int(np.argmax(lesion.reshape(len(lesion), -1).sum(axis=1)))
    page.locator("#view").focus()
    for _ in range(target):
        page.keyboard.press("ArrowDown")
    expected_sop = site["images"][target].SOPInstanceUID
    page.wait_for_function(f"document.getElementById('view').dataset.sop === '{expected_sop}'")
    page.locator("#opacity").fill("0")
    page.wait_for_timeout(300)
    plain = _canvas(page)
    page.locator("#opacity").fill("70")
    page.wait_for_function("Number(document.getElementById('view').dataset.marked) > 0")
    page.wait_for_timeout(300)
    marked = _canvas(page)
    page.screenshot(path=str(tmp_path / "ai-page.png"))

    # where the overlay is: in screen pixels, against the lesion mask scaled to the canvas
    mask = np.asarray(Image.fromarray((lesion[target] > 0).astype(np.uint8) * 255)
                      .resize((plain.shape[1], plain.shape[0]), Image.Resampling.NEAREST)) > 0
    far = ~np.asarray(Image.fromarray(mask.astype(np.uint8) * 255)
                      .resize((plain.shape[1], plain.shape[0]))
                      .filter(__import__("PIL.ImageFilter", fromlist=["x"]).MaxFilter(
                          2 * (plain.shape[0] // SIZE) * 3 + 1))).astype(bool)
    changed = np.abs(marked - plain).sum(axis=2) > 30
    inside = changed[mask].mean()
    outside = changed[far].mean()
    print(f"\noverlay: {inside:.2f} of the lesion's pixels changed, {outside:.3f} of the "
          "pixels away from it")
    assert inside > 0.5, inside
    assert outside < 0.05, outside

    # the SEG the run produced is a new series of the study
    page.get_by_role("button", name="Series", exact=True).click()  # the study's series again
    page.wait_for_selector("#list button:has-text('SEG')", timeout=30_000)
    assert page.locator("#list button").count() == 2  # the CT series and its new SEG
    seg = site["node"].core.catalog
    assert any(r.modality == "SEG" for r in seg.instances(None))

    # send the SEG series to the PACS
    page.locator("#list button", has_text="SEG").first.click()
    page.wait_for_selector("#series-view:not([hidden])")
    page.get_by_role("button", name="Send series").click()
    page.wait_for_function("document.getElementById('sent').textContent.startsWith('sent 1')",
                           timeout=30_000)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not list(site["pacs"].rglob("*.dcm")):
        time.sleep(0.2)
    [arrived] = [p for p in site["pacs"].rglob("*") if p.is_file()]
    assert pydicom.dcmread(arrived).Modality == "SEG"
    watched_page.check()
    assert watched_page.console_errors == []


def test_status_view_and_no_token_no_data(site: dict[str, Any], watched_page) -> None:  # type: ignore[no-untyped-def]
    page = watched_page.page
    page.goto(site["root"] + "/ui/")
    page.get_by_label("Token").wait_for()  # tokens exist: nothing without one
    assert page.locator("#list li").count() == 0
    page.get_by_label("Token").fill("snt_wrong")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_function("document.getElementById('login-error').textContent.length > 0")
    page.get_by_label("Token").fill(site["token"])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Status").click()
    page.wait_for_selector("#status-figures dt")
    text = page.locator("#status").inner_text()
    assert "queue depth" in text and "processed" in text
    assert "Newcomer" not in text and "NEW-1" not in text  # no PHI on the status view
    watched_page.check()
