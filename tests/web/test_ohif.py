"""OHIF, served by the node, in a real browser, fully offline: the study list shows the
patient, the study opens on a rendered CT, and the DICOM SEG loads as an overlay."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from node.web.viewer import find_viewer
from pipelines import dicom_seg, phantoms, synthetic
from tests.web.conftest import WebNode

pytestmark = pytest.mark.slow


def _encode(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _shot(locator: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


def test_ohif_lists_renders_and_overlays_the_seg(web_node: WebNode, watched_page,  # type: ignore[no-untyped-def]
                                                 tmp_path) -> None:  # type: ignore[no-untyped-def]
    if find_viewer(web_node.settings.http) is None:
        pytest.skip("OHIF is not installed (make viewer fetches it with npm)")
    data = phantoms.phantoms(12, size=128, seed=3)
    images, seg = synthetic.labelled_series(data.hu, data.lesion,
                                            synthetic.Patient("OHIF-1", "Viewer^Vera"))
    for ds in images:
        web_node.node.write(_encode(ds))
    web_node.node.write(dicom_seg.encode(seg))
    page = watched_page.page

    page.goto(web_node.root + "/")
    row = page.get_by_text("Viewer, Vera")
    row.wait_for(timeout=60_000)  # the study list shows the patient
    row.click()
    page.get_by_role("button", name="Basic Viewer").first.click()
    page.wait_for_function("document.querySelector('.cornerstone-canvas, canvas') !== null",
                           timeout=60_000)
    viewport = page.locator('[data-cy="viewport-pane"]').first
    page.wait_for_function(
        "() => { const c = document.querySelector('.cornerstone-canvas') || "
        "document.querySelector('[data-cy=\"viewport-pane\"] canvas'); "
        "return c && c.width > 0; }", timeout=60_000)
    page.wait_for_timeout(1500)
    ct = _shot(viewport)
    assert ct.std() > 10, "the CT viewport is one flat colour"
    page.screenshot(path=str(tmp_path / "ohif-ct.png"))

    skip = page.get_by_text("Skip all")  # OHIF's first-visit tour covers the viewer
    if skip.count():
        skip.first.click()
    page.locator('[data-cy="study-browser-thumbnail-no-image"]').first.dblclick()
    page.get_by_role("button", name="Yes").click(timeout=60_000)  # open the Segmentation
    page.wait_for_timeout(3000)
    overlaid = _shot(viewport)
    page.screenshot(path=str(tmp_path / "ohif-seg.png"))
    red = (overlaid[..., 0] - overlaid[..., 1] > 40) & (overlaid[..., 0] - overlaid[..., 2] > 40)
    red_before = (ct[..., 0] - ct[..., 1] > 40) & (ct[..., 0] - ct[..., 2] > 40)
    print(f"\nOHIF: {red.sum()} red pixels with the SEG, {red_before.sum()} before")
    assert red.sum() > 50 and red.sum() > 10 * max(1, red_before.sum())
    watched_page.check()
