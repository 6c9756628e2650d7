"""`serve` with its default `ack = "spool"` on an S3 store (SeaweedFS) that goes away: the
PACS still gets success, a kill -9 of the node loses nothing, and once the store is back
the restarted node uploads every instance byte for byte."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pydicom
import pytest

from bench import delay_proxy
from node.api import Node
from node.index.catalog import Catalog
from node.index.spooled import SpooledRows
from node.settings import load
from pipelines import synthetic
from tests.fixtures.node import free_port
from tests.fixtures.seaweed import S3Server
from tests.test_serve import READY, SUPPORT_NODE, Served

N = 12


@pytest.fixture
def store_link(s3_server: S3Server) -> Iterator[Callable[[bool], int]]:
    """``link(up)``: the node's way to the S3 server, on one port, switched on or off."""
    url = urlparse(s3_server.endpoint_url)
    port = free_port()
    state: dict[str, delay_proxy.DelayProxy | None] = {"proxy": None}

    def link(up: bool) -> int:
        proxy = state["proxy"]
        if up and proxy is None:
            state["proxy"] = delay_proxy.start(port, target=(url.hostname or "", url.port or 80),
                                               delay_s=0.0)
        elif not up and proxy is not None:
            proxy.stop()
            state["proxy"] = None
        return port

    yield link
    link(False)


def _config(tmp_path: Path, s3_server: S3Server, s3_root: str, port: int) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[store]\nurl = "s3://{s3_root}"\n'
        f'[store.options]\nendpoint_url = "http://127.0.0.1:{port}"\n'
        f'key = "{s3_server.key}"\nsecret = "{s3_server.secret}"\n'
        f'region = "{s3_server.region}"\n'
        "[processing]\nworkers = 0\n")
    path.chmod(0o600)
    return path


def _status(home: Path, config: Path, *args: str) -> dict[str, object]:
    proc = subprocess.run([str(SUPPORT_NODE), "status", "--json", "--home", str(home),
                           "--config", str(config), *args],
                          capture_output=True, text=True, timeout=200,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("SUPPORT_NODE_")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout))


def test_the_store_down_and_a_kill_lose_nothing(tmp_path: Path, s3_server: S3Server,
                                                s3_root: str, store_link, dcmtk) -> None:
    port = store_link(True)
    config = _config(tmp_path, s3_server, s3_root, port)
    home, send = tmp_path / "home", tmp_path / "send"
    files = [synthetic.write(ds, send) for ds in synthetic.ct_series(N, 128, seed=5)]
    dimse_port = free_port()
    node = Served("--config", config, "--dimse-port", str(dimse_port), home=home)
    try:
        node.wait_for(READY, timeout=90)
        store_link(False)  # the store goes away

        sent = dcmtk("storescu", "-aec", "SUPPORT_NODE", "127.0.0.1", str(dimse_port),
                     *map(str, files))
        assert sent.returncode == 0 and "Status" not in sent.stderr, sent.stderr
        settings = load(config=config, home=home, environ={})
        with Catalog(settings.index.url) as index:  # `status` needs the store: it is down
            assert SpooledRows(index).totals()[0] == 2 * N  # acknowledged, all spooled
        node.proc.send_signal(signal.SIGKILL)  # the node dies with all of it spooled
        node.proc.wait(10)
    finally:
        node.stop()

    store_link(True)
    again = Served("--config", config, "--dimse-port", str(free_port()), home=home)
    try:
        again.wait_for(READY, timeout=90)
        deadline = time.monotonic() + 120
        while (done := _status(home, config))["spool"] != {"objects": 0, "bytes": 0}:
            assert time.monotonic() < deadline, again.output()
            time.sleep(0.5)
        assert done["instances"] == N
    finally:
        again.stop()

    with Node.from_settings(settings) as api:
        for path in files:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            record = api.core.catalog.get_instance(uid)
            assert record is not None
            stored = api.core.fs.fs.cat_file(api.core.fs._join(f"{record.object_key}/"
                                                                "original.dcm"))
            assert stored  # in S3 itself, not only in the spool
            back = pydicom.dcmread(io.BytesIO(
                api.core.fs.cat_file(f"{record.object_key}/original.dcm")))
            sent_ds = pydicom.dcmread(path)
            assert back.SOPInstanceUID == uid and back.PixelData == sent_ds.PixelData
    assert not list((home / "spool").glob("*.seg"))  # uploaded segments are deleted
