"""Query/Retrieve as workstations use it: dcmtk's findscu, movescu and getscu against the node."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from pipelines import synthetic
from tests.fixtures.node import RunningNode, free_port
from tests.test_dimse import dataset_bytes

Dcmtk = Callable[..., subprocess.CompletedProcess[str]]



@pytest.fixture
def destination(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """pynetdicom's storescp on 127.0.0.1 as the C-MOVE destination DEST."""
    port, out = free_port(), tmp_path / "dest"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pynetdicom", "storescp", "-ba", "127.0.0.1",
                             "-aet", "DEST", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    yield port, out
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def qr_node(dimse_factory: Callable[..., RunningNode], destination: tuple[int, Path],
            tmp_path: Path) -> tuple[RunningNode, list[pydicom.Dataset], dict[str, Path]]:
    node = dimse_factory({"destinations": {"DEST": {"host": "127.0.0.1",
                                                    "port": destination[0]},
                                           "DOWN": {"host": "127.0.0.1",
                                                    "port": free_port()}}})
    jane = synthetic.ct_study(series=2, per_series=3, size=64, seed=1)
    john = synthetic.ct_study(synthetic.Patient("PAT-0002", "Smith^John", "19800202", "M"),
                              series=1, per_series=2, size=64, seed=2)
    for ds in john:
        ds.StudyDate = "20240301"
        ds.AccessionNumber = "ACC-0002"
    files = {}
    for ds in jane + john:
        path = synthetic.write(ds, tmp_path / "src")
        node.node.write(path.read_bytes())
        files[str(ds.SOPInstanceUID)] = path
    return node, jane + john, files


def findscu(dcmtk: Dcmtk, node: RunningNode, out: Path, *keys: str,
            model: str = "-S") -> list[pydicom.Dataset]:
    out.mkdir(exist_ok=True)
    args = [a for k in keys for a in ("-k", k)]
    result = dcmtk("findscu", model, "-X", "-od", str(out), "-aec", node.ae_title, *args,
                   "127.0.0.1", str(node.port))
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_find_studies_by_name_wildcard_and_date_range(qr_node, dcmtk: Dcmtk,
                                                      tmp_path: Path) -> None:
    node, study, _ = qr_node
    got = findscu(dcmtk, node, tmp_path / "a", "QueryRetrieveLevel=STUDY", "PatientName=doe*",
                  "StudyInstanceUID", "NumberOfStudyRelatedInstances", "ModalitiesInStudy")
    assert [str(r.StudyInstanceUID) for r in got] == [str(study[0].StudyInstanceUID)]
    assert int(got[0].NumberOfStudyRelatedInstances) == 6
    assert got[0].ModalitiesInStudy == "CT"
    got = findscu(dcmtk, node, tmp_path / "b", "QueryRetrieveLevel=STUDY",
                  "StudyDate=20240201-20240331", "PatientID", "AccessionNumber")
    assert [(r.PatientID, r.AccessionNumber) for r in got] == [("PAT-0002", "ACC-0002")]
    got = findscu(dcmtk, node, tmp_path / "c", "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
    assert len(got) == 2


def test_find_at_every_level_in_both_models(qr_node, dcmtk: Dcmtk, tmp_path: Path) -> None:
    node, study, _ = qr_node
    patients = findscu(dcmtk, node, tmp_path / "p", "QueryRetrieveLevel=PATIENT", "PatientID",
                       "PatientName", model="-P")
    assert sorted(str(p.PatientName) for p in patients) == ["Doe^Jane", "Smith^John"]
    series = findscu(dcmtk, node, tmp_path / "s", "QueryRetrieveLevel=SERIES",
                     f"StudyInstanceUID={study[0].StudyInstanceUID}", "SeriesInstanceUID",
                     "Modality", "NumberOfSeriesRelatedInstances")
    assert len(series) == 2 and {int(s.NumberOfSeriesRelatedInstances) for s in series} == {3}
    images = findscu(dcmtk, node, tmp_path / "i", "QueryRetrieveLevel=IMAGE",
                     f"StudyInstanceUID={study[0].StudyInstanceUID}",
                     f"SeriesInstanceUID={study[0].SeriesInstanceUID}", "SOPInstanceUID",
                     "InstanceNumber")
    assert sorted(int(i.InstanceNumber) for i in images) == [1, 2, 3]


def _find_statuses(node: RunningNode, identifier: pydicom.Dataset,
                   cancel_after: int | None = None) -> list[int]:
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

    ae = AE(ae_title="PYTEST")
    ae.add_requested_context(Find)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    statuses = []
    try:
        for n, (status, _) in enumerate(assoc.send_c_find(identifier, Find, msg_id=7)):
            statuses.append(int(status.Status))
            if cancel_after is not None and n + 1 == cancel_after:
                assoc.send_c_cancel(7, query_model=Find)
    finally:
        assoc.release()
    return statuses


def test_find_without_the_series_uid_at_image_level_is_refused(qr_node) -> None:
    from node.dimse.identifier import identifier

    node, study, _ = qr_node
    ask = identifier("IMAGE", StudyInstanceUID=str(study[0].StudyInstanceUID), SOPInstanceUID="")
    assert _find_statuses(node, ask) == [0xA900]


def test_find_stops_at_c_cancel(qr_node) -> None:
    """Over a real association a C-CANCEL races the (fast) responses, so the handler is
    driven directly: once the cancel is seen, it answers 0xFE00 and sends nothing more."""
    from types import SimpleNamespace

    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

    from node.dimse.identifier import identifier
    from node.dimse.qr import QRDeps, handle_find

    node, study, _ = qr_node
    event = SimpleNamespace(
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="PYTEST")),
        request=SimpleNamespace(AffectedSOPClassUID=Find),
        identifier=identifier("IMAGE", StudyInstanceUID=str(study[0].StudyInstanceUID),
                              SeriesInstanceUID=str(study[0].SeriesInstanceUID),
                              SOPInstanceUID=""),
        is_cancelled=False,
    )
    c = node.node.core
    responses = handle_find(event, QRDeps(c.catalog, c.fs, c.settings, c.policy))
    first = next(responses)
    assert first[0] == 0xFF00
    event.is_cancelled = True
    assert list(responses) == [(0xFE00, None)]


def test_move_a_study_arrives_byte_identical(qr_node, destination, dcmtk: Dcmtk) -> None:
    node, study, files = qr_node
    result = dcmtk("movescu", "-S", "-aem", "DEST", "-aec", node.ae_title,
                   "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={study[0].StudyInstanceUID}",
                   "127.0.0.1", str(node.port))
    assert result.returncode == 0, result.stderr
    arrived = sorted(p for p in destination[1].rglob("*") if p.is_file())
    assert len(arrived) == 6
    for path in arrived:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sent = files[str(ds.SOPInstanceUID)]
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(sent.read_bytes())


def test_move_to_unknown_or_down_destination(qr_node, dcmtk: Dcmtk) -> None:
    node, study, _ = qr_node
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study[0].StudyInstanceUID}"]
    unknown = dcmtk("movescu", "-S", "-aem", "NOBODY", "-aec", node.ae_title, *keys,
                    "127.0.0.1", str(node.port))
    assert "MoveDestinationUnknown" in unknown.stdout + unknown.stderr
    down = dcmtk("movescu", "-S", "-aem", "DOWN", "-aec", node.ae_title, *keys,
                 "127.0.0.1", str(node.port))
    print("DOWN", down.returncode, down.stdout, down.stderr)
    assert down.returncode != 0
    # ... and the node keeps serving.
    assert dcmtk("echoscu", "-aec", node.ae_title, "127.0.0.1", str(node.port)).returncode == 0


def get_series(dcmtk: Dcmtk, node: RunningNode, first: pydicom.Dataset, out: Path,
               files: dict[str, Path]) -> list[Path]:
    """getscu of the series of ``first`` into ``out``: asserts success and that each
    arrived data set is byte for byte the one sent (``files`` by SOP Instance UID)."""
    out.mkdir()
    result = dcmtk("getscu", "-S", "-od", str(out), "-aec", node.ae_title,
                   "-k", "QueryRetrieveLevel=SERIES",
                   "-k", f"StudyInstanceUID={first.StudyInstanceUID}",
                   "-k", f"SeriesInstanceUID={first.SeriesInstanceUID}",
                   "127.0.0.1", str(node.port))
    assert result.returncode == 0, result.stderr
    got = sorted(out.iterdir())
    for path in got:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert dataset_bytes(path.read_bytes()) == \
            dataset_bytes(files[str(ds.SOPInstanceUID)].read_bytes())
    return got


def test_get_a_series(qr_node, dcmtk: Dcmtk, tmp_path: Path) -> None:
    node, study, files = qr_node
    assert len(get_series(dcmtk, node, study[0], tmp_path / "got", files)) == 3


def test_get_of_a_compressed_instance_by_a_requester_without_its_syntax(
        dimse_node: RunningNode, dcmtk: Dcmtk, tmp_path: Path) -> None:
    """getscu accepts uncompressed syntaxes only: a JPEG-stored instance comes decompressed."""
    from tests.fixtures.node import PYDICOM_FILES

    source = PYDICOM_FILES / "SC_rgb_dcmtk_+eb+cy+np.dcm"  # JPEG baseline, 8-bit RGB
    dimse_node.node.write(source.read_bytes())
    stored = pydicom.dcmread(source)
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk("getscu", "-S", "-od", str(out), "-aec", dimse_node.ae_title,
                   "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={stored.StudyInstanceUID}",
                   "127.0.0.1", str(dimse_node.port))
    assert result.returncode == 0, result.stderr
    [got] = [pydicom.dcmread(p) for p in out.iterdir()]
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert (got.pixel_array == stored.pixel_array).all()


def test_retrieve_reports_a_tampered_instance_as_failed_and_sends_the_rest(
        qr_node, dcmtk: Dcmtk, tmp_path: Path) -> None:
    node, study, _ = qr_node
    store = Path(node.settings.store.url.removeprefix("file://"))
    victim = next(store.rglob("original.dcm"))
    data = bytearray(victim.read_bytes())
    data[200] ^= 1
    victim.write_bytes(bytes(data))
    out = tmp_path / "got"
    out.mkdir()
    dcmtk("getscu", "-S", "-od", str(out), "-aec", node.ae_title,
          "-k", "QueryRetrieveLevel=STUDY",
          "-k", f"StudyInstanceUID={study[0].StudyInstanceUID}", "127.0.0.1", str(node.port))
    sent = [p for p in out.iterdir()]
    expected = 6 - (1 if study[0].StudyInstanceUID in str(victim) else 0)
    assert len(sent) == expected


def test_find_with_question_mark_wildcard_and_uid_list(qr_node, dcmtk: Dcmtk,
                                                        tmp_path: Path) -> None:
    node, study, _ = qr_node
    got = findscu(dcmtk, node, tmp_path / "q", "QueryRetrieveLevel=STUDY",
                  "PatientID=PAT-000?", "StudyInstanceUID")
    assert len(got) == 2
    series_uids = sorted({str(ds.SeriesInstanceUID) for ds in study[:6]})
    got = findscu(dcmtk, node, tmp_path / "l", "QueryRetrieveLevel=SERIES",
                  f"StudyInstanceUID={study[0].StudyInstanceUID}",
                  f"SeriesInstanceUID={series_uids[0]}\\{series_uids[1]}", "SeriesNumber")
    assert sorted(str(g.SeriesInstanceUID) for g in got) == series_uids


def test_query_and_retrieve_rights_and_hospital_scope(
        dimse_factory: Callable[..., RunningNode], dcmtk: Dcmtk, tmp_path: Path) -> None:
    node = dimse_factory({"dimse": {"callers": {
        "CT_A": {"hospital": "default"},
        "WS_B": {"hospital": "st-marys", "retrieve": False},
        "NOQUERY": {"hospital": "default", "query": False},
    }}})
    for ds in synthetic.ct_study(series=1, per_series=2, size=32, seed=3):
        node.node.write(synthetic.write(ds, tmp_path / "src").read_bytes())  # hospital default

    def find(calling: str) -> subprocess.CompletedProcess[str]:
        return dcmtk("findscu", "-S", "-v", "-aet", calling, "-aec", node.ae_title,
                     "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                     "127.0.0.1", str(node.port))

    assert "Pending" in find("CT_A").stdout + find("CT_A").stderr
    other = find("WS_B")  # another hospital's caller sees nothing of "default"
    assert other.returncode == 0 and "Pending" not in other.stdout + other.stderr
    refused = find("NOQUERY")
    assert "Pending" not in refused.stdout + refused.stderr
    assert "0x124" in refused.stdout + refused.stderr  # PS3.7 C.5: Refused, not authorised


@pytest.fixture
def tls_destination(tmp_path: Path) -> Iterator[tuple[int, Path, list[bytes]]]:
    """A storage SCP that speaks TLS only, with a throwaway self-signed certificate."""
    import ssl

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {made.stderr[-200:]!r}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    received: list[bytes] = []

    def keep(event: object) -> int:
        received.append(event.encoded_dataset())  # type: ignore[attr-defined]
        return 0

    ae = AE(ae_title="TLSDEST")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1",
                                                      "1.2.840.10008.1.2"])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=context,
                             evt_handlers=[(evt.EVT_C_STORE, keep)])
    yield port, cert, received
    server.shutdown()


def test_move_to_a_tls_destination(dimse_factory: Callable[..., RunningNode],
                                   tls_destination, dcmtk: Dcmtk, tmp_path: Path) -> None:
    port, cert, received = tls_destination
    other_ca = tmp_path / "other.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(tmp_path / "k2.pem"), "-out", str(other_ca),
                    "-subj", "/CN=someone-else"], capture_output=True, check=True)
    node = dimse_factory({"destinations": {
        "TLSDEST": {"host": "127.0.0.1", "port": port, "tls": True, "ca_file": str(cert)},
        "IMPOSTOR": {"host": "127.0.0.1", "port": port, "tls": True, "ca_file": str(other_ca)},
    }})
    study = synthetic.ct_study(series=1, per_series=2, size=32, seed=9)
    for ds in study:
        node.node.write(synthetic.write(ds, tmp_path / "src").read_bytes())
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study[0].StudyInstanceUID}"]
    # A destination whose certificate the node cannot verify gets nothing.
    dcmtk("movescu", "-S", "-aem", "IMPOSTOR", "-aec", node.ae_title, *keys,
          "127.0.0.1", str(node.port))
    assert received == []
    result = dcmtk("movescu", "-S", "-aem", "TLSDEST", "-aec", node.ae_title, *keys,
                   "127.0.0.1", str(node.port))
    assert result.returncode == 0, result.stderr
    assert len(received) == 2
