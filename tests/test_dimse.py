"""The node as a PACS sees it: real associations from dcmtk's tools and from pynetdicom."""

from __future__ import annotations

import concurrent.futures
import hashlib
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.dicom.header import parse
from node.dicom.structure import split_part10
from node.dimse.transport import QuickAckSocket
from pipelines import synthetic
from tests.fixtures.node import RunningNode, pydicom_test_files

Dcmtk = Callable[..., subprocess.CompletedProcess[str]]

# storescu proposes uncompressed syntaxes unless told which one the files use.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}


def storable_pydicom_files(tmp: Path) -> list[Path]:
    """pydicom's files that are whole, identified instances, copied under fresh names."""
    out = []
    for i, path in enumerate(pydicom_test_files()):
        try:
            parse(path.read_bytes())
        except Exception:
            continue
        dest = tmp / f"{i:03d}_{path.name}"
        shutil.copy(path, dest)
        out.append(dest)
    return out


def dataset_bytes(data: bytes) -> bytes:
    """The encoded data set after the Part-10 preamble and file meta."""
    offset, _ = split_part10(data)
    return data[offset:]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pynetdicom_send(node: RunningNode, path: Path, calling: str = "PYTEST") -> int:
    """C-STORE of a file's data set exactly as encoded in it; returns the status."""
    # Send the bytes after the file meta unchanged: no decode, no re-encode.
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling)
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def storescu(dcmtk: Dcmtk, node: RunningNode, files: list[Path], *extra: str,
             calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    # -R: propose only the files' own SOP classes (storescu's default list lacks some).
    return dcmtk("storescu", "-R", "-nh", "-aet", calling, "-aec", node.ae_title, *extra,
                 "127.0.0.1", str(node.port), *map(str, files), timeout=300)


def all_received(node: RunningNode) -> dict[str, bytes]:
    """sha256 of the data set -> stored original, for every instance and conflict copy."""
    api = node.node
    out = {}
    for rec in api.ls():
        data = api.read_original(rec)
        out[digest(dataset_bytes(data))] = data
    for c in api.conflicts():
        data = api.core.fs.cat_file(f"{c.object_key}/original.dcm")
        out[digest(dataset_bytes(data))] = data
    return out


def test_echoscu_verifies_the_node(dimse_node: RunningNode, dcmtk: Dcmtk) -> None:
    result = dcmtk("echoscu", "-aec", dimse_node.ae_title, "127.0.0.1", str(dimse_node.port))
    assert result.returncode == 0, result.stderr


def test_storescu_sends_every_pydicom_file_it_can_read(
        dimse_node: RunningNode, dcmtk: Dcmtk, tmp_path: Path) -> None:
    files = storable_pydicom_files(tmp_path)
    assert len(files) > 50
    by_syntax: dict[str, list[Path]] = {}
    for path in files:
        by_syntax.setdefault(parse(path.read_bytes()).transfer_syntax, []).append(path)
    unreadable = set()
    sent_with_storescu = []
    for syntax, group in by_syntax.items():
        if syntax not in STORESCU_PROPOSE:
            continue  # HTJ2K, JPEG process 14 ...: storescu cannot propose them
        result = storescu(dcmtk, dimse_node, group, STORESCU_PROPOSE[syntax])
        assert "Store Failed" not in result.stderr, result.stderr[-3000:]
        unreadable |= {p for p in group if f"file: {p}" in result.stderr}
        sent_with_storescu += [p for p in group if p not in unreadable]
    # dcmtk itself cannot read a few of pydicom's odd files; everything else arrived.
    assert len(unreadable) <= 4, sorted(p.name for p in unreadable)
    expected = {parse(p.read_bytes()).sop_instance_uid for p in sent_with_storescu}
    assert expected <= {r.sop_uid for r in dimse_node.node.ls()}
    for rec in dimse_node.node.ls():
        stored = dimse_node.node.read_original(rec)
        assert stored[128:132] == b"DICM"  # a Part-10 file with its meta header
        assert parse(stored).sop_instance_uid == rec.sop_uid


def test_every_pydicom_file_comes_back_exactly_as_received(
        dimse_node: RunningNode, tmp_path: Path) -> None:
    """pynetdicom sends each file's data set bytes unchanged; the node must keep them so."""
    files = [p for p in storable_pydicom_files(tmp_path) if split_part10(p.read_bytes())[1]]
    assert len(files) > 50
    consistent = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        status = pynetdicom_send(dimse_node, path)
        if ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID:
            assert status == 0xC001, path.name  # badVR.dcm: the command's UID is another
        else:
            assert status == 0x0000, path.name
            consistent.append(path)
    files = consistent
    received = all_received(dimse_node)
    missing = [p.name for p in files if digest(dataset_bytes(p.read_bytes())) not in received]
    assert not missing, f"not kept as received: {missing}"
    for data in received.values():
        assert data[128:132] == b"DICM"


def test_pynetdicom_sender_gets_its_data_set_back_byte_for_byte(
        dimse_node: RunningNode, tmp_path: Path) -> None:
    study = synthetic.ct_study(series=2, per_series=3, size=64)
    for ds in study:
        path = synthetic.write(ds, tmp_path)
        assert pynetdicom_send(dimse_node, path) == 0x0000
        rec = next(dimse_node.node.ls(sop=str(ds.SOPInstanceUID)))
        stored = dimse_node.node.read_original(rec)
        assert dataset_bytes(stored) == dataset_bytes(path.read_bytes())


def test_storescu_multi_series_study_lands_in_the_hierarchy(
        dimse_node: RunningNode, dcmtk: Dcmtk, tmp_path: Path) -> None:
    study = synthetic.ct_study(series=3, per_series=4, size=64)
    files = [synthetic.write(ds, tmp_path) for ds in study]
    result = storescu(dcmtk, dimse_node, files)
    assert result.returncode == 0, result.stderr
    records = list(dimse_node.node.ls("default"))
    assert len(records) == 12
    assert len({r.series_uid for r in records}) == 3
    assert {r.study_uid for r in records} == {str(study[0].StudyInstanceUID)}
    # The patient folder is a pseudonym, never the Patient ID.
    assert all(r.patient_key != "PAT-0001" and "PAT" not in r.object_key for r in records)
    for rec in records:
        assert rec.object_key.startswith(f"default/{rec.patient_key}/{rec.study_uid}/"
                                         f"{rec.series_uid}/{rec.sop_uid}")
    sent = {digest(dataset_bytes(p.read_bytes())) for p in files}
    assert sent == set(all_received(dimse_node))


def test_four_associations_at_once(dimse_node: RunningNode, dcmtk: Dcmtk,
                                   tmp_path: Path) -> None:
    files = [synthetic.write(ds, tmp_path) for ds in synthetic.ct_series(40, size=64)]
    chunks = [files[i::4] for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: storescu(dcmtk, dimse_node, c), chunks))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert dimse_node.node.core.catalog.counts()["instances"] == 40


def test_same_instance_twice_is_stored_once(dimse_node: RunningNode, dcmtk: Dcmtk,
                                            tmp_path: Path) -> None:
    path = synthetic.write(synthetic.ct_study(series=1, per_series=1)[0], tmp_path)
    for _ in range(2):
        assert storescu(dcmtk, dimse_node, [path]).returncode == 0
    folder = next(dimse_node.node.ls()).object_key
    assert sorted(dimse_node.node.core.fs.find(folder)) == [
        f"{folder}/description.json", f"{folder}/original.dcm"]


def test_same_uid_other_bytes_is_kept_apart_and_reported(
        dimse_node: RunningNode, tmp_path: Path) -> None:
    ds = synthetic.ct_study(series=1, per_series=1)[0]
    first = synthetic.write(ds, tmp_path / "a")
    ds.SeriesDescription = "CHANGED"
    second = synthetic.write(ds, tmp_path / "b")
    assert pynetdicom_send(dimse_node, first) == 0x0000
    assert pynetdicom_send(dimse_node, second) == 0x0000
    rec = next(dimse_node.node.ls())
    assert dataset_bytes(dimse_node.node.read_original(rec)) == \
        dataset_bytes(first.read_bytes())
    conflicts = dimse_node.node.conflicts(rec.sop_uid)
    assert len(conflicts) == 1
    kept = dimse_node.node.core.fs.cat_file(f"{conflicts[0].object_key}/original.dcm")
    assert dataset_bytes(kept) == dataset_bytes(second.read_bytes())


def test_unknown_calling_ae_is_refused_when_an_allow_list_is_set(
        dimse_factory: Callable[..., RunningNode], dcmtk: Dcmtk, tmp_path: Path) -> None:
    node = dimse_factory({"dimse": {"callers": {"CT_SCANNER": {"hospital": "st-marys"}}}})
    refused = dcmtk("echoscu", "-aet", "INTRUDER", "-aec", node.ae_title, "127.0.0.1",
                    str(node.port))
    assert refused.returncode != 0
    assert "Rejected" in refused.stderr or "rejected" in refused.stderr.lower()
    path = synthetic.write(synthetic.ct_study(series=1, per_series=1)[0], tmp_path)
    assert storescu(dcmtk, node, [path], calling="INTRUDER").returncode != 0
    assert node.node.core.catalog.counts()["instances"] == 0
    allowed = storescu(dcmtk, node, [path], calling="CT_SCANNER")
    assert allowed.returncode == 0, allowed.stderr
    assert [r.hospital for r in node.node.ls()] == ["st-marys"]


def _truncated(tmp_path: Path) -> Path:
    path = synthetic.write(synthetic.ct_study(series=1, per_series=1)[0], tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 1000])  # pixel data claims 1000 bytes more
    return cut


def test_data_set_cut_short_is_not_acknowledged(dimse_node: RunningNode,
                                                tmp_path: Path) -> None:
    assert pynetdicom_send(dimse_node, _truncated(tmp_path)) == 0xC000
    assert dimse_node.node.core.catalog.counts()["instances"] == 0
    assert dimse_node.node.objects() == []
    # ... and the node keeps serving.
    good = synthetic.write(synthetic.ct_study(series=1, per_series=1)[0], tmp_path / "ok")
    assert pynetdicom_send(dimse_node, good) == 0x0000


def _with_meta_value(path: Path, old: str, new: str) -> Path:
    """Rewrites the first occurrence of ``old`` (in the file meta) to ``new``, same length."""
    assert len(old) == len(new)
    data = path.read_bytes()
    i = data.index(old.encode())
    assert i < split_part10(data)[0]
    path.write_bytes(data[:i] + new.encode() + data[i + len(old):])
    return path


def test_sop_instance_uid_differing_from_the_command_is_refused(
        dimse_node: RunningNode, tmp_path: Path) -> None:
    ds = synthetic.ct_study(series=1, per_series=1)[0]
    uid = str(ds.SOPInstanceUID)
    other = uid[:-1] + ("1" if uid[-1] != "1" else "2")
    # pynetdicom puts the file meta's SOP Instance UID in the command.
    path = _with_meta_value(synthetic.write(ds, tmp_path), uid, other)
    assert pynetdicom_send(dimse_node, path) == 0xC001
    assert dimse_node.node.objects() == []


def test_sop_class_differing_from_the_command_is_refused(
        dimse_node: RunningNode, tmp_path: Path) -> None:
    ds = synthetic.ct_study(series=1, per_series=1)[0]
    path = _with_meta_value(synthetic.write(ds, tmp_path), "1.2.840.10008.5.1.4.1.1.2",
                            "1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage in the command
    assert pynetdicom_send(dimse_node, path) == 0xA900
    assert dimse_node.node.objects() == []


def test_image_without_pixel_data_does_not_match_its_sop_class(
        dimse_node: RunningNode, tmp_path: Path) -> None:
    ds = synthetic.ct_study(series=1, per_series=1)[0]
    del ds.PixelData
    path = synthetic.write(ds, tmp_path)
    assert pynetdicom_send(dimse_node, path) == 0xA900
    assert dimse_node.node.objects() == []


def test_store_failure_gives_a_retryable_status_and_nothing_indexed(
        dimse_node: RunningNode, tmp_path: Path) -> None:
    store_root = Path(dimse_node.settings.store.url.removeprefix("file://"))
    store_root.mkdir(parents=True, exist_ok=True)
    (store_root / "default").write_bytes(b"not a folder")  # the hospital folder can't be made
    path = synthetic.write(synthetic.ct_study(series=1, per_series=1)[0], tmp_path)
    status = pynetdicom_send(dimse_node, path)
    assert 0xA700 <= status <= 0xA7FF
    assert dimse_node.node.core.catalog.counts()["instances"] == 0
    (store_root / "default").unlink()
    assert pynetdicom_send(dimse_node, path) == 0x0000  # the sender's retry succeeds


def test_index_failure_gives_a_retryable_status_and_no_object(
        dimse_node: RunningNode, tmp_path: Path) -> None:
    db = dimse_node.settings.index.url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE instances RENAME TO instances_away")
    path = synthetic.write(synthetic.ct_study(series=1, per_series=1)[0], tmp_path)
    status = pynetdicom_send(dimse_node, path)
    assert 0xA700 <= status <= 0xA7FF
    assert [k for k in dimse_node.node.objects() if k.endswith("original.dcm")] == []
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE instances_away RENAME TO instances")
    assert pynetdicom_send(dimse_node, path) == 0x0000


def test_verification_with_pynetdicom_requestor(dimse_node: RunningNode) -> None:
    ae = AE(ae_title="ECHO")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", dimse_node.port, ae_title=dimse_node.ae_title)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


@pytest.mark.parametrize("size", [64])
def test_raw_objects_carry_no_phi_after_c_store(dimse_node: RunningNode, dcmtk: Dcmtk,
                                                tmp_path: Path, size: int) -> None:
    ds = synthetic.ct_study(series=1, per_series=1, size=size)[0]
    path = synthetic.write(ds, tmp_path)
    assert storescu(dcmtk, dimse_node, [path]).returncode == 0
    pixels = bytes(ds.PixelData)
    store_root = Path(dimse_node.settings.store.url.removeprefix("file://"))
    for obj in store_root.rglob("*"):
        if obj.is_file():
            raw = obj.read_bytes()
            assert b"Doe^Jane" not in raw and b"PAT-0001" not in raw
            assert all(pixels[i:i + 64] not in raw for i in range(0, len(pixels) - 64, 512))
            assert "PAT-0001" not in str(obj)



def test_quick_ack_reads_return_what_arrived_when_the_peer_closes() -> None:
    """A sender that hangs up mid-PDU must not crash the reader (it reports a short read)."""
    ours, peer = socket.socketpair()
    try:
        reader = object.__new__(QuickAckSocket)  # only .socket is used by recv
        reader.socket = ours
        peer.sendall(b"\x04\x00\x00")
        peer.close()
        assert reader.recv(6) == bytearray(b"\x04\x00\x00")
    finally:
        ours.close()


def test_sender_closing_after_release_leaves_no_error(
        dimse_node: RunningNode, dcmtk: Dcmtk, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    files = [synthetic.write(ds, tmp_path) for ds in synthetic.ct_series(3, size=256)]
    with caplog.at_level("WARNING"):
        assert storescu(dcmtk, dimse_node, files).returncode == 0
        time.sleep(0.5)  # the node notices the closed connection
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], \
        [r.getMessage() for r in caplog.records]
    assert dimse_node.node.core.catalog.counts()["instances"] == 3
