"""``support-node serve`` with its HTTP edge, as a process: ready line, health, HTTPS,
refusals, and memory while a large series goes in by STOW-RS and out by WADO-RS."""

from __future__ import annotations

import io
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pipelines import synthetic
from tests.test_serve import READY, SUPPORT_NODE, Served, _env

HTTP = re.compile(r"HTTP on (\S+/dicom-web)")


def _peak_rss(pid: int) -> int:
    """Peak resident memory of a process, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_serve_answers_dicomweb_and_health(tmp_path: Path, served: list[Served]) -> None:
    node = Served("--dimse-port", "0", "--processing-workers", "1", home=tmp_path / "home")
    served.append(node)
    node.wait_for(READY)
    url = HTTP.search("".join(node.seen)).group(1)
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":8042/dicom-web")
    root = url.rsplit("/dicom-web", 1)[0]
    assert requests.get(root + "/healthz", timeout=10).json()["status"] == "ok"
    assert requests.get(url + "/studies", timeout=10).json() == []
    boundary = secrets.token_hex(8)
    body = b"".join(_series_body(2, 64, boundary))
    r = requests.post(url + "/studies", data=body, timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200
    # /metrics adds up every process: the processing worker's stages show here too
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = requests.get(root + "/metrics", timeout=10).text
        if 'support_node_processing_stage_seconds_count{stage="decode"} 2.0' in text:
            break
        time.sleep(0.5)
    assert 'support_node_processing_stage_seconds_count{stage="decode"} 2.0' in text, text[-2000:]
    assert 'support_node_instances_received_total{outcome="stored",protocol="web"} 2.0' in text
    assert "Large^Series" not in text and "BIG-1" not in text


def test_http_on_a_public_address_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    env = _env(tmp_path) | {"SUPPORT_NODE_HTTP_HOST": "0.0.0.0"}
    result = subprocess.run([str(SUPPORT_NODE), "serve", "--init", "--home",
                             str(tmp_path / "home"),
                             "--dimse-port", "0", "--http-port", "0"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "http.host" in result.stderr and "tokens create" in result.stderr
    assert "Traceback" not in result.stderr


def test_https(tmp_path: Path, served: list[Served]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(home / "node.key"), "-out", str(home / "node.pem")],
                   check=True, capture_output=True)
    config = tmp_path / "tls.toml"
    config.write_text('[http]\ntls_cert = "node.pem"\ntls_key = "node.key"\n')
    node = Served("--dimse-port", "0", "--processing-workers", "0", "--config", config,
                  home=home)
    served.append(node)
    node.wait_for(READY)
    url = HTTP.search("".join(node.seen)).group(1)
    assert url.startswith("https://")
    r = requests.get(url + "/studies", timeout=10, verify=str(home / "node.pem"))
    assert r.status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url + "/studies", timeout=10)  # an unknown CA is refused by the client


def _series_body(count: int, size: int, boundary: str) -> Iterator[bytes]:
    patient = synthetic.Patient(patient_id="BIG-1", name="Large^Series")
    for ds in synthetic.ct_series(count, size=size, patient=patient, seed=4):
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield out.getvalue()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


@pytest.mark.slow
def test_memory_stays_flat_for_a_300_mb_series_in_and_out(tmp_path: Path,
                                                          served: list[Served]) -> None:
    count, size = 600, 512  # 600 × 512 KiB ≈ 300 MiB
    node = Served("--dimse-port", "0", "--processing-workers", "0", home=tmp_path / "home")
    served.append(node)
    node.wait_for(READY)
    url = HTTP.search("".join(node.seen)).group(1)
    pid = node.proc.pid
    requests.get(url + "/studies", timeout=10)  # warm up the app
    before = _peak_rss(pid)
    boundary = secrets.token_hex(8)
    r = requests.post(url + "/studies", data=_series_body(count, size, boundary), timeout=600,
                      headers={"Content-Type": 'multipart/related; type="application/dicom"; '
                                               f"boundary={boundary}"})
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["00081199"]["Value"]) == count
    after_stow = _peak_rss(pid)
    study = requests.get(url + "/studies", timeout=10).json()[0]["0020000D"]["Value"][0]
    received = 0
    last = b""
    with requests.get(f"{url}/studies/{study}", stream=True, timeout=600, headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}) as got:
        assert got.status_code == 200
        for chunk in got.iter_content(1 << 20):
            received += len(chunk)
            last = chunk[-64:]
    after_wado = _peak_rss(pid)
    series_bytes = count * size * size * 2
    assert received > series_bytes and last.rstrip().endswith(b"--")
    growth_in, growth_out = after_stow - before, after_wado - after_stow
    print(f"\nRSS growth: STOW {growth_in / 2**20:.0f} MiB, WADO {growth_out / 2**20:.0f} MiB "
          f"for a {series_bytes / 2**20:.0f} MiB series")
    assert growth_in < series_bytes / 4
    assert growth_out < series_bytes / 4
    # and what came back is what went in
    one = requests.get(f"{url}/studies/{study}/series", timeout=10).json()[0]
    assert one["00201209"]["Value"] == [count]
