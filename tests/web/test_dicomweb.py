"""DICOMweb through real HTTP: dicomweb-client (a peer no one here wrote), requests, and
dcmtk across protocols."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from pipelines import synthetic
from tests.fixtures.node import pydicom_test_files
from tests.test_cli import REFUSED
from tests.test_qr import dataset_bytes
from tests.web.conftest import WebNode, split_multipart, stow

STAR = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def client(web: WebNode) -> DICOMwebClient:
    return DICOMwebClient(url=web.url)


def series(n: int = 4, size: int = 64, seed: int = 1, **patient: str) -> list[pydicom.Dataset]:
    return list(synthetic.ct_series(n, size=size, seed=seed,
                                    patient=synthetic.Patient(**patient) if patient else None))


def encoded(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# ---- STOW-RS ---------------------------------------------------------------------------------


def test_stow_of_every_pydicom_file_that_c_store_takes(web_node: WebNode) -> None:
    files = [p for p in pydicom_test_files() if p.name not in REFUSED]
    for path in files:
        response = stow(web_node.url, [path.read_bytes()])
        assert response.status_code == 200, (path.name, response.text)
        assert response.headers["content-type"] == "application/dicom+json"
        doc = response.json()
        assert "00081199" in doc and "00081198" not in doc
        # WADO-RS gives back the stored bytes (a conflict keeps the first copy: skip those).
        url = doc["00081199"]["Value"][0]["00081190"]["Value"][0]
        back = requests.get(web_node.root + url, headers=STAR, timeout=30)
        assert back.status_code == 200
        (headers, body), = split_multipart(back)
        sop = doc["00081199"]["Value"][0]["00081155"]["Value"][0]
        if web_node.node.conflicts(sop):
            continue
        if path.read_bytes()[128:132] == b"DICM":
            assert body == path.read_bytes(), path.name
        else:  # sent without a file meta header: given back as a Part-10 file
            assert body[128:132] == b"DICM", path.name
            assert pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID == sop


def test_dicomweb_client_stores_and_reads_back_a_ct_series(web_node: WebNode) -> None:
    dw = client(web_node)
    sent = series(6, patient_id="PAT-STOW", name="Stow^Sam")
    result = dw.store_instances(sent)
    assert len(result.ReferencedSOPSequence) == 6
    study = sent[0].StudyInstanceUID
    back = dw.retrieve_instance(study, sent[2].SeriesInstanceUID, sent[2].SOPInstanceUID,
                                media_types=(("application/dicom", "*"),))
    assert back.SOPInstanceUID == sent[2].SOPInstanceUID
    assert np.array_equal(back.pixel_array, sent[2].pixel_array)
    # the stored original, byte for byte
    rec = web_node.node.core.catalog.get_instance(sent[2].SOPInstanceUID)
    raw = requests.get(f"{web_node.url}/studies/{study}/series/{sent[2].SeriesInstanceUID}"
                       f"/instances/{sent[2].SOPInstanceUID}", headers=STAR, timeout=30)
    # dicomweb-client sent no preamble; the stored bytes come back behind one
    assert split_multipart(raw)[0][1] == bytes(128) + b"DICM" + web_node.node.read_original(rec)


def test_stow_is_idempotent_and_keeps_a_conflict_apart(web_node: WebNode) -> None:
    ds = series(1)[0]
    data = encoded(ds)
    assert stow(web_node.url, [data]).status_code == 200
    assert stow(web_node.url, [data]).status_code == 200  # the same bytes: a no-op success
    ds.PatientName = "Other^Bytes"
    assert stow(web_node.url, [encoded(ds)]).status_code == 200
    assert len(web_node.node.conflicts(ds.SOPInstanceUID)) == 1
    assert len(list(web_node.node.ls())) == 1


def test_a_truncated_part_among_good_ones_is_202_and_the_rest_is_stored(
        web_node: WebNode) -> None:
    good = [encoded(ds) for ds in series(3)]
    cut = good[1][: len(good[1]) // 2]
    response = stow(web_node.url, [good[0], cut, good[2]])
    assert response.status_code == 202
    doc = response.json()
    assert len(doc["00081199"]["Value"]) == 2
    failed = doc["00081198"]["Value"]
    assert len(failed) == 1 and failed[0]["00081197"]["Value"] == [0xC000]
    assert len(list(web_node.node.ls())) == 2


def test_garbage_only_is_409_and_nothing_is_stored(web_node: WebNode) -> None:
    response = stow(web_node.url, [b"not dicom at all" * 20, b"\x00" * 300])
    assert response.status_code == 409
    assert len(response.json()["00081198"]["Value"]) == 2
    assert list(web_node.node.ls()) == []


def test_a_study_that_differs_from_the_url_is_refused(web_node: WebNode) -> None:
    ds = series(1)[0]
    response = stow(web_node.url, [encoded(ds)], path="/studies/1.2.3.4.5")
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    ok = stow(web_node.url, [encoded(ds)], path=f"/studies/{ds.StudyInstanceUID}")
    assert ok.status_code == 200


def test_wrong_media_type_is_415_and_an_unreadable_body_400(web_node: WebNode) -> None:
    r = requests.post(web_node.url + "/studies", data=b"{}", timeout=10,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    r = requests.post(web_node.url + "/studies", data=b"{}", timeout=10,
                      headers={"Content-Type": 'multipart/related; type="application/dicom+xml";'
                                               " boundary=x"})
    assert r.status_code == 415
    r = requests.post(web_node.url + "/studies", data=b"no parts here", timeout=10,
                      headers={"Content-Type": 'multipart/related; type="application/dicom";'
                                               " boundary=abc"})
    assert r.status_code == 400


def test_dicomweb_client_chunked_upload_above_one_megabyte(web_node: WebNode) -> None:
    sent = series(8, size=256, seed=3)  # ~1 MB: dicomweb-client sends it chunked
    result = client(web_node).store_instances(sent)
    assert len(result.ReferencedSOPSequence) == 8
    assert len(list(web_node.node.ls())) == 8


# ---- QIDO-RS ---------------------------------------------------------------------------------


@pytest.fixture
def archive(web_node: WebNode) -> WebNode:
    """Three patients' studies, stored through STOW-RS."""
    dw = client(web_node)
    for i, (pid, name, date) in enumerate((("QA-1", "Doe^Jane", "20240115"),
                                           ("QA-2", "Doe^John", "20240220"),
                                           ("QA-3", "Smith^Ann", "20231231"))):
        study = series(2 + i, seed=10 + i, patient_id=pid, name=name)
        for ds in study:
            ds.StudyDate = date
        dw.store_instances(study)
    return web_node


def _names(found: list[dict]) -> set[str]:
    return {r["00100010"]["Value"][0]["Alphabetic"] for r in found}


def test_qido_name_wildcard_date_range_uid_list(archive: WebNode) -> None:
    dw = client(archive)
    assert _names(dw.search_for_studies(search_filters={"PatientName": "doe*"})) == {
        "Doe^Jane", "Doe^John"}
    assert _names(dw.search_for_studies(
        search_filters={"StudyDate": "20240101-20240131"})) == {"Doe^Jane"}
    all_studies = dw.search_for_studies()
    uids = [s["0020000D"]["Value"][0] for s in all_studies[:2]]
    found = dw.search_for_studies(search_filters={"StudyInstanceUID": ",".join(uids)})
    assert {s["0020000D"]["Value"][0] for s in found} == set(uids)
    counts = sorted(s["00201208"]["Value"][0] for s in all_studies)
    assert counts == [2, 3, 4]


def test_qido_series_by_modality_without_a_study(archive: WebNode) -> None:
    found = client(archive).search_for_series(search_filters={"Modality": "CT"})
    assert len(found) == 3
    assert all(s["00080060"]["Value"] == ["CT"] for s in found)
    assert client(archive).search_for_series(search_filters={"Modality": "MR"}) == []


def test_qido_includefield_and_hex_keys(archive: WebNode) -> None:
    found = client(archive).search_for_studies(
        search_filters={"00100020": "QA-2"}, fields=["PatientBirthDate", "00081030"])
    assert len(found) == 1
    assert "00100030" in found[0] and "00081030" in found[0]
    r = requests.get(archive.url + "/studies", params={"includefield": "all",
                                                        "PatientID": "QA-1"}, timeout=10)
    assert r.status_code == 200 and "00200010" in r.json()[0]


def test_qido_paging_ends_with_get_remaining(archive: WebNode) -> None:
    dw = client(archive)
    everything = dw.search_for_instances(limit=2, get_remaining=True)
    assert len(everything) == 9
    assert len({i["00080018"]["Value"][0] for i in everything}) == 9


def test_qido_bad_parameters_are_400(archive: WebNode) -> None:
    for params in ({"fuzzymatching": "maybe"}, {"limit": "-1"}, {"NoSuchKeyword": "x"},
                   {"StudyDate": "2024-01"}, {"StudyInstanceUID": "1.2.*"}):
        r = requests.get(archive.url + "/studies", params=params, timeout=10)
        assert r.status_code == 400, params
        assert "error" in r.json()


# ---- WADO-RS ---------------------------------------------------------------------------------


def test_metadata_equals_pydicom_json_of_the_header(web_node: WebNode) -> None:
    sent = series(3, seed=5)
    client(web_node).store_instances(sent)
    meta = client(web_node).retrieve_series_metadata(sent[0].StudyInstanceUID,
                                                     sent[0].SeriesInstanceUID)
    assert len(meta) == 3
    by_uid = {m["00080018"]["Value"][0]: m for m in meta}
    for ds in sent:
        expected = ds.to_json_dict(bulk_data_threshold=1 << 30)
        expected.pop("7FE00010")
        got = by_uid[ds.SOPInstanceUID]
        assert got["7FE00010"]["BulkDataURI"].startswith("/dicom-web/studies/")
        for tag, element in expected.items():
            assert got[tag] == element, tag


def test_frames_equal_the_decoded_pixels(web_node: WebNode) -> None:
    sent = series(2, seed=6)
    client(web_node).store_instances(sent)
    ds = sent[1]
    frames = client(web_node).retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1])
    pixels = np.frombuffer(frames[0], dtype="<i2").reshape(ds.Rows, ds.Columns)
    assert np.array_equal(pixels, ds.pixel_array)


def test_compressed_frames_as_stored_or_decoded(web_node: WebNode) -> None:
    path = pydicom.data.get_testdata_file("JPEG2000.dcm")
    stow(web_node.url, [Path(path).read_bytes()])
    ds = pydicom.dcmread(path)
    base = (f"{web_node.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/1")
    star = requests.get(base, timeout=30, headers={
        "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"})
    (headers, body), = split_multipart(star)
    assert f"transfer-syntax={ds.file_meta.TransferSyntaxUID}" in headers["content-type"]
    assert body[:2] == b"\xff\x4f"  # a JPEG 2000 codestream, as stored
    plain = requests.get(base, timeout=30, headers={
        "Accept": 'multipart/related; type="application/octet-stream"'})
    (headers, body), = split_multipart(plain)
    assert "1.2.840.10008.1.2.1" in headers["content-type"]
    assert len(body) == ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    wrong = requests.get(base, timeout=30, headers={
        "Accept": "multipart/related; type=application/octet-stream; "
                  "transfer-syntax=1.2.840.10008.1.2.4.50"})
    assert wrong.status_code == 406


def test_rendered_and_thumbnail_decode_to_the_requested_size(web_node: WebNode) -> None:
    sent = series(3, size=128, seed=7)
    client(web_node).store_instances(sent)
    ds = sent[0]
    base = f"{web_node.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    r = requests.get(f"{base}/instances/{ds.SOPInstanceUID}/rendered",
                     params={"window": "40,400,linear"}, headers={"Accept": "image/png"},
                     timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(r.content)))
    assert image.shape == (128, 128) and image.std() > 10  # not one flat colour
    thumb = requests.get(f"{base}/instances/{ds.SOPInstanceUID}/thumbnail",
                         params={"viewport": "64,64"}, headers={"Accept": "image/jpeg"},
                         timeout=30)
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 64)
    for url in (f"{base}/thumbnail", f"{web_node.url}/studies/{ds.StudyInstanceUID}/thumbnail"):
        r = requests.get(url, headers={"Accept": "image/jpeg"}, timeout=30)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "JPEG"
    assert requests.get(f"{base}/thumbnail", headers={"Accept": "text/html"},
                        timeout=10).status_code == 406


def test_unknown_study_is_404(web_node: WebNode) -> None:
    for path in ("/studies/1.2.3.999", "/studies/1.2.3.999/metadata",
                 "/studies/1.2.3.999/series/1.2/instances/1.2.3/frames/1"):
        r = requests.get(web_node.url + path, timeout=10)
        assert r.status_code == 404, path


def test_ohif_requests_are_answered(web_node: WebNode) -> None:
    sent = series(3, seed=8, patient_id="OHIF-1", name="Viewer^Vic")
    client(web_node).store_instances(sent)
    ds = sent[0]
    r = requests.get(web_node.url + "/studies?limit=101&offset=0&fuzzymatching=true"
                     "&includefield=00081030,00080060&00100020=OHIF-1", timeout=10)
    assert r.status_code == 200 and len(r.json()) == 1
    assert r.json()[0]["00080061"]["Value"] == ["CT"]
    r = requests.get(f"{web_node.url}/studies/{ds.StudyInstanceUID}/series"
                     "?includefield=0008103E,00080021", timeout=10)
    assert r.status_code == 200 and len(r.json()) == 1
    base = f"{web_node.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    meta = requests.get(base + "/metadata", timeout=10).json()
    assert len(meta) == 3 and meta[0]["00083002"]["Value"]
    thumb = requests.get(f"{base}/instances/{ds.SOPInstanceUID}/thumbnail?viewport=256,256",
                         headers={"Accept": "image/jpeg"}, timeout=10)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    frames = requests.get(f"{base}/instances/{ds.SOPInstanceUID}/frames/1", timeout=10,
                          headers={"Accept": "multipart/related; type=application/octet-stream;"
                                             " transfer-syntax=*"})
    (headers, body), = split_multipart(frames)
    assert headers["content-type"].startswith("application/octet-stream; transfer-syntax=")
    assert len(body) == ds.Rows * ds.Columns * 2


# ---- across protocols ------------------------------------------------------------------------


def test_c_store_in_wado_out(web_node: WebNode, dcmtk, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = [synthetic.write(ds, tmp_path / "in") for ds in series(3, seed=9)]
    dcmtk("storescu", "-aec", "SUPPORT_NODE", "127.0.0.1", str(web_node.dimse_port),
          *map(str, files))
    for path in files:
        ds = pydicom.dcmread(path)
        r = requests.get(f"{web_node.url}/studies/{ds.StudyInstanceUID}/series/"
                         f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                         headers=STAR, timeout=30)
        (_, body), = split_multipart(r)
        assert pydicom.dcmread(io.BytesIO(body)).PixelData == ds.PixelData


def test_stow_in_c_get_and_c_move_out_byte_identical(web_factory, destination, dcmtk,  # type: ignore[no-untyped-def]
                                                     tmp_path: Path) -> None:
    web = web_factory({"destinations": {"DEST": {"host": "127.0.0.1",
                                                 "port": destination[0]}}})
    sent = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: d
            for d in (encoded(ds) for ds in series(3, seed=11))}
    assert stow(web.url, list(sent.values())).status_code == 200
    study = pydicom.dcmread(io.BytesIO(next(iter(sent.values())))).StudyInstanceUID
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "-aec", "SUPPORT_NODE", "127.0.0.1", str(web.dimse_port)]
    got = tmp_path / "got"
    got.mkdir()
    result = dcmtk("getscu", "-S", "-od", str(got), *keys)
    assert result.returncode == 0, result.stderr
    moved = dcmtk("movescu", "-S", "-aem", "DEST", *keys)
    assert moved.returncode == 0, moved.stderr
    for folder in (got, destination[1]):
        arrived = [p for p in folder.rglob("*") if p.is_file()]
        assert len(arrived) == 3, folder
        for path in arrived:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(path.read_bytes()) == dataset_bytes(sent[uid])


def test_healthz_and_metrics(web_node: WebNode) -> None:
    stow(web_node.url, [encoded(ds) for ds in series(2, seed=12)])
    health = requests.get(web_node.root + "/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json()["store"]["ok"] and health.json()["index"]["ok"]
    assert health.json()["queue_depth"] == 2  # no processing worker runs in this test
    text = requests.get(web_node.root + "/metrics", timeout=10).text
    assert 'support_node_instances_received_total{outcome="stored",protocol="web"}' in text
    assert "support_node_ingest_stage_seconds_bucket" in text
    assert "support_node_queue_depth 2.0" in text
    assert json.dumps(health.json()).find("Doe") == -1
