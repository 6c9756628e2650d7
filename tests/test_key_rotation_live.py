"""Key rotation beside a running node, as an operator does it: `serve` runs (receiver and
processing workers in their own processes), `support-node keys rotate --reencrypt` runs in
another process, then a workstation retrieves with dcmtk's movescu and a modality stores with
storescu. The node must read what the rotation rewrote and write new objects under the new key;
two rotations at once must give two different key ids and leave every object readable."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.api import Node
from node.layout import DESCRIPTION, ORIGINAL, OUTPUT
from pipelines import synthetic
from tests.fixtures.waiting import eventually
from tests.test_qr import destination  # noqa: F401  (a fixture: storescp as DEST)
from tests.test_serve import READY, SUPPORT_NODE, Served

pytestmark = pytest.mark.slow
Dcmtk = Callable[..., subprocess.CompletedProcess[str]]


def _env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORT_NODE_")}
    return clean | {"PYTHONUNBUFFERED": "1"}


def cli(*args: str | Path, home: Path) -> subprocess.Popen[str]:
    """`support-node ARGS --home HOME` as its own process."""
    return subprocess.Popen([str(SUPPORT_NODE), *map(str, args), "--home", str(home)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env())


def finished(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


@pytest.fixture
def running(tmp_path: Path,
            destination: tuple[int, Path]) -> Iterator[dict[str, object]]:  # noqa: F811
    """A home with one 6-instance study, served by `support-node serve` (one processing
    worker) with DEST as a C-MOVE destination."""
    home = tmp_path / "home"
    config = tmp_path / "node.toml"
    config.write_text(f'[destinations.DEST]\nhost = "127.0.0.1"\nport = {destination[0]}\n')
    study = synthetic.ct_study(series=2, per_series=3, size=64, seed=31)
    with Node.open(home=home, create_keys=True) as node:
        for ds in study:
            node.write(synthetic.write(ds, tmp_path / "src").read_bytes())
    served = Served("--config", config, "--dimse-port", "0", "--processing-workers", "1",
                    home=home)
    try:
        port = int(served.wait_for(READY, timeout=60).group(2))
        yield {"home": home, "port": port, "study": study, "served": served}
    finally:
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(30)
    assert "Traceback" not in served.output()


def move(dcmtk: Dcmtk, port: int, study_uid: str, dest: Path) -> subprocess.CompletedProcess[str]:
    for old in dest.glob("*"):
        old.unlink()
    return dcmtk("movescu", "-S", "-aem", "DEST", "-aec", "SUPPORT_NODE",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                 "127.0.0.1", str(port))


def key_ids(home: Path) -> dict[str, int]:
    with Node.open(home=home) as node:
        return {k: node.core.fs.key_id(k) for k in node.objects() if not k.startswith("_")}


def test_rotation_beside_a_running_node(running: dict[str, object],
                                        destination: tuple[int, Path],  # noqa: F811
                                        dcmtk: Dcmtk, tmp_path: Path) -> None:
    home, port = running["home"], running["port"]
    assert isinstance(home, Path) and isinstance(port, int)
    study_uid = str(running["study"][0].StudyInstanceUID)  # type: ignore[index]
    assert move(dcmtk, port, study_uid, destination[1]).returncode == 0
    assert len(list(destination[1].iterdir())) == 6

    out = finished(cli("keys", "rotate", "--reencrypt", home=home))
    assert "key 2 (128 bits) is now active" in out

    result = move(dcmtk, port, study_uid, destination[1])
    assert result.returncode == 0, result.stderr
    assert "0xa702" not in (result.stdout + result.stderr).lower()
    assert len(list(destination[1].iterdir())) == 6  # every instance arrived

    new = synthetic.ct_study(synthetic.Patient("PAT-0009", "Roe^Rita", "19900909", "F"),
                             series=1, per_series=1, size=64, seed=32)[0]
    sent = dcmtk("storescu", "-aec", "SUPPORT_NODE", "127.0.0.1", str(port),
                 str(synthetic.write(new, tmp_path / "new")))
    assert sent.returncode == 0, sent.stderr
    # Acknowledged from the node's spool: in the store once the uploader has put it.
    assert eventually(lambda: any(k.rsplit("/", 2)[-2] == str(new.SOPInstanceUID)
                                  for k in key_ids(home)), 60, every=0.2)
    folder_of = {k.rsplit("/", 2)[-2]: k.rsplit("/", 1)[0] for k in key_ids(home)}
    folder = folder_of[str(new.SOPInstanceUID)]
    # The uploader puts the original and the description (several PUTs at once, so either
    # may land first), and the processing worker (another process), which may read the
    # original from the spool before its upload, writes output.npy: wait for all three.
    assert eventually(lambda: {f"{folder}/{n}" for n in (ORIGINAL, DESCRIPTION, OUTPUT)}
                      <= key_ids(home).keys(), 60, every=0.2)
    ids = key_ids(home)
    for name in (ORIGINAL, DESCRIPTION, OUTPUT):
        assert ids[f"{folder}/{name}"] == 2, name
    assert set(ids.values()) == {2}  # the rotation left nothing under key 1


def test_two_rotations_at_once(running: dict[str, object],
                               destination: tuple[int, Path],  # noqa: F811
                               dcmtk: Dcmtk) -> None:
    home, port = running["home"], running["port"]
    assert isinstance(home, Path) and isinstance(port, int)
    first = cli("keys", "rotate", "--reencrypt", home=home)
    second = cli("keys", "rotate", "--reencrypt", home=home)
    outputs = finished(first) + finished(second)
    assert "key 2 " in outputs and "key 3 " in outputs

    doc = json.loads((home / "keys.json").read_text())
    assert [k["id"] for k in doc["keys"]] == [1, 2, 3]
    assert len({k["material"] for k in doc["keys"]}) == 3
    assert doc["active"] == 3
    verify = subprocess.run([str(SUPPORT_NODE), "verify", "--home", str(home)],
                            capture_output=True, text=True, env=_env(), timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert set(key_ids(home).values()) == {3}

    study_uid = str(running["study"][0].StudyInstanceUID)  # type: ignore[index]
    result = move(dcmtk, port, study_uid, destination[1])
    assert result.returncode == 0, result.stderr
    assert len(list(destination[1].iterdir())) == 6


def test_sighup_reloads_every_process_and_stops_none(running: dict[str, object],
                                                     dcmtk: Dcmtk, tmp_path: Path) -> None:
    home, port, served = running["home"], running["port"], running["served"]
    assert isinstance(home, Path) and isinstance(port, int) and isinstance(served, Served)
    for _ in range(2):  # both processing workers up (a SIGHUP before is ignored)
        served.wait_for(re.compile(r"processing worker \S+ ready"))
    finished(cli("keys", "rotate", home=home))
    served.proc.send_signal(signal.SIGHUP)
    # serve itself and its two processing workers (images; segmentation and pretraining)
    for _ in range(3):
        served.wait_for(re.compile(r"SIGHUP: key file read again; key 2 is active"))
    time.sleep(1)
    assert served.proc.poll() is None
    new = synthetic.ct_study(series=1, per_series=1, size=64, seed=33)[0]
    sent = dcmtk("storescu", "-aec", "SUPPORT_NODE", "127.0.0.1", str(port),
                 str(synthetic.write(new, tmp_path / "new")))
    assert sent.returncode == 0, sent.stderr
    assert "Traceback" not in served.output()


def test_an_interrupted_reencryption_resumes(running: dict[str, object]) -> None:
    home, served = running["home"], running["served"]
    assert isinstance(home, Path) and isinstance(served, Served)
    for _ in range(6):  # the node has processed what it holds: it writes nothing more
        served.wait_for(re.compile(r"support_node.processing: processed \S+"))
    finished(cli("keys", "rotate", home=home))
    with Node.open(home=home) as node:  # what a run killed half-way leaves
        objects = node.objects()
        for key in objects[: len(objects) // 2]:
            node.core.fs.reencrypt(key)
        folder = node.core.fs.root + "/" + objects[0].rsplit("/", 1)[0]
    stale = Path(folder) / ".original.dcm.0123456789ab.snenc-tmp"
    stale.write_bytes(b"ciphertext of a write that never finished")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    out = finished(cli("keys", "reencrypt", home=home))
    assert f"re-encrypted {len(objects) - len(objects) // 2} of {len(objects)} objects" in out
    assert set(key_ids(home).values()) == {2}
    assert not stale.exists()
