"""Tokens: created by the CLI, checked on every request but /healthz, scoped by hospital."""

from __future__ import annotations

import io
import re

import pydicom
import requests
from typer.testing import CliRunner

from node.cli import app
from node.index import schema as s
from pipelines import synthetic
from tests.web.conftest import WebNode, split_multipart, stow


def _create(web: WebNode, *args: str) -> str:
    result = CliRunner().invoke(app, ["tokens", "create", *args, "--home",
                                      str(web.settings.home)])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def _instance(pid: str, seed: int) -> bytes:
    ds = next(synthetic.ct_series(1, size=32, seed=seed,
                                  patient=synthetic.Patient(patient_id=pid)))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_once_a_token_exists_every_request_but_healthz_needs_one(web_node: WebNode) -> None:
    assert requests.get(web_node.url + "/studies", timeout=10).status_code == 200  # anonymous
    token = _create(web_node, "pacs-bridge", "--scope", "readwrite")
    assert re.fullmatch(r"snt_[\w-]{40,}", token)
    r = requests.get(web_node.url + "/studies", timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    wrong = requests.get(web_node.url + "/studies", headers=bearer("snt_nope"), timeout=10)
    assert wrong.status_code == 401
    assert requests.get(web_node.url + "/studies", headers=bearer(token),
                        timeout=10).status_code == 200
    assert requests.get(web_node.root + "/metrics", timeout=10).status_code == 401
    assert requests.get(web_node.root + "/healthz", timeout=10).status_code == 200
    # only a hash is kept
    with web_node.node.core.catalog.engine.connect() as conn:
        stored = [tuple(row) for row in conn.execute(s.tokens.select())]
    assert stored and token not in repr(stored)


def test_rights_and_hospitals(web_node: WebNode) -> None:
    writer_a = _create(web_node, "ct-a", "--hospital", "hosp-a", "--scope", "write")
    reader_a = _create(web_node, "viewer-a", "--hospital", "hosp-a", "--scope", "read")
    reader_b = _create(web_node, "viewer-b", "--hospital", "hosp-b", "--scope", "read")
    assert stow(web_node.url, [_instance("ALICE", 1)], bearer(reader_a)).status_code == 403
    assert stow(web_node.url, [_instance("ALICE", 1)], bearer(writer_a)).status_code == 200
    assert [r.hospital for r in web_node.node.ls()] == ["hosp-a"]
    assert requests.get(web_node.url + "/studies", headers=bearer(writer_a),
                        timeout=10).status_code == 403  # write only: no queries
    seen_a = requests.get(web_node.url + "/studies", headers=bearer(reader_a), timeout=10)
    assert len(seen_a.json()) == 1
    study = seen_a.json()[0]["0020000D"]["Value"][0]
    seen_b = requests.get(web_node.url + "/studies", headers=bearer(reader_b), timeout=10)
    assert seen_b.json() == []  # another hospital sees nothing
    assert requests.get(f"{web_node.url}/studies/{study}", headers=bearer(reader_b),
                        timeout=10).status_code == 404
    assert requests.get(f"{web_node.url}/studies/{study}/metadata", headers=bearer(reader_a),
                        timeout=10).status_code == 200


def test_list_and_revoke(web_node: WebNode) -> None:
    token = _create(web_node, "temp", "--scope", "read")
    runner = CliRunner()
    home = ["--home", str(web_node.settings.home)]
    listed = runner.invoke(app, ["tokens", "list", *home])
    assert "temp" in listed.output and "active" in listed.output and token not in listed.output
    assert runner.invoke(app, ["tokens", "revoke", "temp", *home]).exit_code == 0
    assert requests.get(web_node.url + "/studies", headers=bearer(token),
                        timeout=10).status_code == 401
    again = runner.invoke(app, ["tokens", "revoke", "temp", *home])
    assert again.exit_code == 2 and "no active token" in again.output
    dup = runner.invoke(app, ["tokens", "create", "temp", *home])
    assert dup.exit_code == 2 and "exists already" in dup.output


def _identified_instance() -> bytes:
    ds = next(synthetic.ct_series(1, size=32, seed=7, patient=synthetic.Patient(
        patient_id="MRN-4711", name="Smith^Alice", birth_date="19610203")))
    ds.InstitutionName = "St Example Hospital"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.AccessionNumber = "ACC-99"
    ds.OtherPatientIDs = "OLD-4711"
    item = pydicom.Dataset()
    item.OperatorsName = "Tech^Tina"
    ds.RequestAttributesSequence = [item]
    ds.add_new(0x00291010, "LO", "private Smith")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


_IDENTIFYING = ("Smith", "4711", "19610203", "Example", "Doctor", "ACC-99", "Tina")


def test_a_pseudonymous_token_sees_pseudonyms_only(web_node: WebNode) -> None:
    """QIDO, metadata, instances, bulk data and the AI page never show a name, an ID, a
    birth date or a person to a pseudonymous token; the images and UIDs are all there."""
    writer = _create(web_node, "modality", "--scope", "write")
    research = _create(web_node, "research", "--scope", "read", "--pseudonymous")
    assert stow(web_node.url, [_identified_instance()], bearer(writer)).status_code == 200
    pseudonym = next(web_node.node.ls()).patient_key
    head = bearer(research)

    found = requests.get(web_node.url + "/studies?includefield=all", headers=head, timeout=10)
    assert found.status_code == 200 and len(found.json()) == 1
    study = found.json()[0]
    assert study["00100010"]["Value"] == [{"Alphabetic": pseudonym}]
    assert study["00100020"]["Value"] == [pseudonym]
    assert not any(word in found.text for word in _IDENTIFYING), found.text
    # matching works on the pseudonym, never on what the caller may not see
    by_id = requests.get(f"{web_node.url}/studies?PatientID={pseudonym}", headers=head,
                         timeout=10)
    assert len(by_id.json()) == 1
    assert requests.get(f"{web_node.url}/studies?PatientID=MRN-4711", headers=head,
                        timeout=10).json() == []
    assert requests.get(f"{web_node.url}/studies?PatientBirthDate=19610203", headers=head,
                        timeout=10).status_code == 400

    uid = study["0020000D"]["Value"][0]
    meta = requests.get(f"{web_node.url}/studies/{uid}/metadata", headers=head, timeout=10)
    assert meta.status_code == 200 and not any(w in meta.text for w in _IDENTIFYING)
    doc = meta.json()[0]
    assert doc["00100020"]["Value"] == [pseudonym] and doc["00120062"]["Value"] == ["YES"]
    assert "00291010" not in doc and "7FE00010" in doc

    got = requests.get(f"{web_node.url}/studies/{uid}", headers=head, timeout=10)
    (_, body), = split_multipart(got)
    assert not any(w.encode() in body for w in _IDENTIFYING)
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.PatientName == pseudonym and ds.PatientID == pseudonym
    assert ds.pixel_array.shape == (32, 32) and "PatientBirthDate" not in ds
    sop = ds.SOPInstanceUID
    base = f"{web_node.url}/studies/{uid}/series/{ds.SeriesInstanceUID}/instances/{sop}"
    assert requests.get(f"{base}/bulkdata/00100010", headers=head,
                        timeout=10).status_code == 404

    # the same token as a person on the AI page: the pseudonym, no name
    page = requests.get(f"{web_node.root}/api/hospitals/default/patients", headers=head,
                        timeout=10)
    assert page.status_code == 200 and page.json()[0]["patient_key"] == pseudonym
    assert not any(w in page.text for w in _IDENTIFYING)
    # an identified reader still sees the patient as the PACS sent it
    reader = _create(web_node, "radiology", "--scope", "read")
    named = requests.get(web_node.url + "/studies", headers=bearer(reader), timeout=10)
    assert "Smith^Alice" in named.text and "MRN-4711" in named.text
    listed = CliRunner().invoke(app, ["tokens", "list", "--home", str(web_node.settings.home)])
    assert "pseudonyms" in listed.output
