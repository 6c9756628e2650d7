"""`support-node verify` holds the store against the index, both ways, and `--repair` fixes
what it can; stale temporary files are swept when `serve` starts. Each case is made the way it
happens: objects whose index row never came (a process killed between write and commit), a row
whose objects are gone, a temporary file of a killed write."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest

from node.api import Node
from node.layout import DESCRIPTION, ORIGINAL, QUARANTINE
from pipelines import synthetic
from tests.fixtures.waiting import eventually
from tests.test_key_rotation_live import _env
from tests.test_serve import READY, SUPPORT_NODE, Served

PATIENT = synthetic.Patient("PAT-REPAIR", "Fixit^Felix", "19600606", "M")


def support_node(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SUPPORT_NODE), *map(str, args)], capture_output=True,
                          text=True, env=_env(), timeout=120, check=False)


@dataclass
class Damaged:
    home: Path
    store: Path
    unindexed: str  # objects, no row, description fine: to be indexed
    orphan: str  # an original alone, no row: to be quarantined
    missing: str  # a row, no objects
    missing_uid: str
    recent: str  # no row, but received a minute ago: maybe in flight
    temp: Path
    originals: dict[str, bytes]


@pytest.fixture
def damaged(tmp_path: Path) -> Iterator[Damaged]:
    home = tmp_path / "home"
    study = synthetic.ct_study(PATIENT, series=1, per_series=6, size=64, seed=41)
    with Node.open(home=home, create_keys=True) as node:
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        node.core.ingest.clock = lambda: an_hour_ago
        folders, originals = [], {}
        for ds in study[:5]:
            data = synthetic.write(ds, tmp_path / "src").read_bytes()
            folders.append(node.write(data).object_key)
            originals[folders[-1]] = data
        node.core.ingest.clock = lambda: datetime.now(UTC)
        data = synthetic.write(study[5], tmp_path / "src").read_bytes()
        folders.append(node.write(data).object_key)
        fs, catalog = node.core.fs, node.core.catalog
        uid = {f: f.rsplit("/", 1)[1] for f in folders}
        # killed between writing the objects and committing the row
        catalog.remove_instance(uid[folders[0]])
        catalog.remove_instance(uid[folders[5]])
        # ... and killed between the original and its description
        catalog.remove_instance(uid[folders[1]])
        fs.rm_file(f"{folders[1]}/{DESCRIPTION}")
        # objects lost (deleted by hand, a bad disk), the row stays
        fs.rm_file(f"{folders[2]}/{ORIGINAL}")
        fs.rm_file(f"{folders[2]}/{DESCRIPTION}")
        store = Path(fs.root)
    an_hour = (time.time() - 3700, time.time() - 3700)
    for path in (store / folders[0]).iterdir():
        os.utime(path, an_hour)  # the crash was an hour ago
    os.utime(store / folders[1] / ORIGINAL, an_hour)
    temp = store / folders[3] / ".description.json.5eed5eed5eed.snenc-tmp"
    temp.write_bytes(b"half an object")
    os.utime(temp, (time.time() - 7200, time.time() - 7200))
    yield Damaged(home, store, folders[0], folders[1], folders[2], uid[folders[2]], folders[5],
                  temp, originals)


def test_verify_reports_both_ways_and_repair_fixes(damaged: Damaged) -> None:
    d = damaged
    before = support_node("verify", "--home", d.home)
    assert before.returncode == 1
    report = before.stdout + before.stderr
    assert f"NOT INDEXED {d.unindexed}" in report
    assert f"NOT INDEXED {d.orphan}" in report
    assert f"MISSING {d.missing} (indexed as {d.missing_uid})" in report
    assert f"STALE TEMPORARY FILE {d.temp.relative_to(d.store)}" in report
    assert "index: 2 folders without an index row, 1 rows without their objects, " \
           "1 stale temporary files" in report
    assert f"not indexed yet (received in the last few minutes, left alone): {d.recent}" \
        in report
    assert "Fixit" not in report and "PAT-REPAIR" not in report  # no PHI in the report

    repaired = support_node("verify", "--repair", "--home", d.home)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: 1 indexed, 1 quarantined, 1 rows removed, 1 temporary files removed" \
        in repaired.stdout
    assert not d.temp.exists()

    after = support_node("verify", "--home", d.home)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "index: 0 folders without an index row, 0 rows without their objects" in after.stdout
    listed = [json.loads(line) for line in
              support_node("ls", "--json", "--home", d.home).stdout.splitlines()]
    keys = {rec["object_key"] for rec in listed}
    assert d.unindexed in keys and d.missing not in keys and d.orphan not in keys
    with Node.open(home=d.home) as node:
        rec = next(r for r in node.ls() if r.object_key == d.unindexed)
        assert node.read_original(rec) == d.originals[d.unindexed]
        # set aside, bytes unchanged: they decrypt under the original path
        blob = (d.store / QUARANTINE / d.orphan / ORIGINAL).read_bytes()
        assert node.decrypt(blob, f"{d.orphan}/{ORIGINAL}") == d.originals[d.orphan]
        assert pydicom.dcmread(io.BytesIO(d.originals[d.orphan])).PatientID == PATIENT.patient_id


def test_serve_sweeps_stale_temporary_files_at_start(damaged: Damaged, tmp_path: Path) -> None:
    fresh = damaged.temp.with_name(".original.dcm.000000000000.snenc-tmp")
    fresh.write_bytes(b"a write in progress in another process")
    served = Served("--dimse-port", "0", "--processing-workers", "0", home=damaged.home)
    try:
        served.wait_for(READY, timeout=60)
        assert eventually(lambda: not damaged.temp.exists(), 30, every=0.2)
        assert fresh.exists()  # too young to be stale: it may still be written
    finally:
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(30)
    assert "removed 1 stale temporary file from the store" in served.output()
