"""The audit trail: every store, query, retrieve and export, by whom, through which
protocol, with UIDs and outcomes, and never a patient's name or ID."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import requests
from typer.testing import CliRunner

from node.cli import app
from pipelines import synthetic
from tests.test_qr import destination  # noqa: F401  (a fixture: storescp as DEST)
from tests.web.conftest import WebNode, web_factory  # noqa: F401  (a fixture)

Dcmtk = Callable[..., subprocess.CompletedProcess[str]]
PHI = ("Audit^Alice", "AUD-4711", "19500505")


def _trail(home: Path, *args: str) -> list[dict]:
    result = CliRunner().invoke(app, ["audit", "--json", "--limit", "500", *args,
                                      "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert not any(word in result.output for word in PHI), result.output
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]


def test_who_did_what_is_recorded_without_phi(
        web_factory: Callable[..., WebNode],  # noqa: F811
        dcmtk: Dcmtk, destination: tuple[int, Path], tmp_path: Path) -> None:  # noqa: F811
    web = web_factory({"dimse": {"callers": {"CT_A": {"hospital": "hosp-a"}}},
                       "destinations": {"DEST": {"host": "127.0.0.1",
                                                 "port": destination[0]}},
                       "http": {"allow_anonymous": True}})
    study = synthetic.ct_study(synthetic.Patient("AUD-4711", "Audit^Alice", "19500505"),
                               series=1, per_series=2, size=32, seed=3)
    files = [synthetic.write(ds, tmp_path / "src") for ds in study]
    port = str(web.dimse_port)
    stored = dcmtk("storescu", "-aet", "CT_A", "-aec", web.settings.dimse.ae_title,
                   "127.0.0.1", port, *map(str, files))
    assert stored.returncode == 0, stored.stderr
    dcmtk("storescu", "-aet", "CT_A", "-aec", web.settings.dimse.ae_title, "127.0.0.1", port,
          str(files[0]))  # again: a duplicate
    found = dcmtk("findscu", "-S", "-aet", "CT_A", "-aec", web.settings.dimse.ae_title,
                  "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=Audit*",
                  "127.0.0.1", port)
    assert found.returncode == 0
    uid = str(study[0].StudyInstanceUID)
    moved = dcmtk("movescu", "-S", "-aet", "CT_A", "-aem", "DEST", "-aec",
                  web.settings.dimse.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={uid}", "127.0.0.1", port)
    assert moved.returncode == 0
    assert requests.get(f"{web.url}/studies?PatientID=AUD-4711", timeout=10).status_code == 200
    assert requests.get(f"{web.url}/studies/{uid}/metadata", timeout=10).status_code == 200
    got = CliRunner().invoke(app, ["get", "hosp-a", "--out", str(tmp_path / "out"),
                                   "--home", str(web.settings.home)])
    assert got.exit_code == 0, got.output
    time.sleep(1.5)  # the batched entries are written within half a second

    trail = _trail(web.settings.home)
    by = {(e["action"], e["protocol"], e["outcome"]) for e in trail}
    stores = [e for e in trail if e["action"] == "store"]
    assert sorted(e["outcome"] for e in stores) == ["duplicate", "stored", "stored"]
    assert all(e["caller"] == "CT_A" and e["hospital"] == "hosp-a" and e["study_uid"] == uid
               for e in stores)
    query = next(e for e in trail if e["action"] == "query" and e["protocol"] == "dimse")
    assert query["outcome"] == "1 matches" and "PatientName" in query["detail"]
    assert ("retrieve", "dimse", "2 instances to send") in by
    move = next(e for e in trail if e["action"] == "retrieve" and e["protocol"] == "dimse")
    assert move["study_uid"] == uid and "C-MOVE to DEST" in move["detail"]
    web_query = next(e for e in trail if e["action"] == "query" and e["protocol"] == "web")
    assert "PatientID" in web_query["detail"] and web_query["caller"] == "anonymous"
    meta = next(e for e in trail if e["action"] == "retrieve" and e["protocol"] == "web")
    assert meta["detail"].endswith("/metadata") and meta["count"] == 2
    export = next(e for e in trail if e["action"] == "export")
    assert export["protocol"] == "cli" and export["count"] == 2
    # filtered, and the same without --json
    assert {e["action"] for e in _trail(web.settings.home, "--action", "store")} == {"store"}
    plain = CliRunner().invoke(app, ["audit", "--home", str(web.settings.home)])
    assert plain.exit_code == 0 and "C-MOVE to DEST" in plain.output
    bad = CliRunner().invoke(app, ["audit", "--action", "nope", "--home",
                                   str(web.settings.home)])
    assert bad.exit_code == 2 and "--action" in bad.output


def test_verify_repair_records_what_it_forgets(settings_factory, tmp_path: Path) -> None:
    """An index row whose objects are gone, removed by verify --repair, is a delete in the
    audit trail, with its UIDs and who ran it."""
    from node.api import Node

    settings = settings_factory()
    ds, kept = synthetic.ct_study(synthetic.Patient("AUD-4711", "Audit^Alice"), series=1,
                                  per_series=2, size=32, seed=8)
    with Node.from_settings(settings, create_keys=True) as node:
        result = node.write(synthetic.write(ds, tmp_path / "src").read_bytes())
        node.write(synthetic.write(kept, tmp_path / "src").read_bytes())
        folder = Path(str(node.core.fs.root)) / result.object_key
    for path in folder.iterdir():
        path.unlink()
    repaired = CliRunner().invoke(app, ["verify", "--repair", "--home", str(settings.home)])
    assert repaired.exit_code in (0, 1), repaired.output
    deleted = _trail(settings.home, "--action", "delete")
    assert len(deleted) == 1 and deleted[0]["sop_uid"] == str(ds.SOPInstanceUID)
    assert deleted[0]["protocol"] == "cli" and deleted[0]["detail"] == "verify --repair"
