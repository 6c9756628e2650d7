"""DICOM over TLS ([dimse.tls]): dcmtk's tools with +tls and pynetdicom as clients; plain
connections to the TLS port, unknown and mismatched client certificates refused."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pipelines import synthetic
from tests.dimse.conftest import Certs, TlsNode

Dcmtk = Callable[..., subprocess.CompletedProcess[str]]


def tls_args(certs: Certs, client: tuple[Path, Path] | None) -> list[str]:
    """dcmtk's options: our client key and certificate (or none: +tla), the node's CA."""
    mine = ["+tls", str(client[0]), str(client[1])] if client else ["+tla"]
    return [*mine, "+cf", str(certs.ca)]


def tls_echo(dcmtk: Dcmtk, node: TlsNode, certs: Certs, client: tuple[Path, Path] | None,
             calling: str = "HOSP_A") -> subprocess.CompletedProcess[str]:
    return dcmtk("echoscu", "-to", "10", *tls_args(certs, client), "-aet", calling,
                 "-aec", node.ae_title, "127.0.0.1", str(node.tls_port), timeout=30)


def dimse_warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records
                     if r.name == "support_node.dimse" and r.levelname == "WARNING")


def logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5.0) -> bool:
    """Whether the node logged a warning with ``text``, waiting for it a moment: the node
    logs from the connection's thread, which may finish after the client has."""
    deadline = time.monotonic() + timeout
    while text not in dimse_warnings(caplog):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


HOSPA_BOUND = {"dimse": {"callers": {
    "HOSP_A": {"hospital": "hospa", "cert_cn": "ct1.hospa.example"},
    "HOSP_B": {"hospital": "hospb"}}}}


def test_dcmtk_echo_store_and_find_over_tls(tls_node_factory: Callable[..., TlsNode],
                                            certs: Certs, dcmtk: Dcmtk,
                                            tmp_path: Path) -> None:
    node = tls_node_factory(HOSPA_BOUND)
    assert tls_echo(dcmtk, node, certs, certs.hospa).returncode == 0
    ds = synthetic.ct_study(series=1, per_series=1, size=32, seed=4)[0]
    path = synthetic.write(ds, tmp_path / "src")
    stored = dcmtk("storescu", *tls_args(certs, certs.hospa), "-aet", "HOSP_A",
                   "-aec", node.ae_title, "127.0.0.1", str(node.tls_port), str(path))
    assert stored.returncode == 0, stored.stderr
    assert [r.hospital for r in node.node.ls()] == ["hospa"]
    found = dcmtk("findscu", "-S", "-v", *tls_args(certs, certs.hospa), "-aet", "HOSP_A",
                  "-aec", node.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                  "-k", "StudyInstanceUID", "127.0.0.1", str(node.tls_port))
    assert found.returncode == 0, found.stderr
    assert str(pydicom.dcmread(path).StudyInstanceUID) in found.stdout + found.stderr


def test_pynetdicom_client_over_tls(tls_node_factory: Callable[..., TlsNode],
                                    certs: Certs) -> None:
    node = tls_node_factory(HOSPA_BOUND)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(str(certs.hospa[1]), str(certs.hospa[0]))
    ae = AE(ae_title="HOSP_A")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.tls_port, ae_title=node.ae_title,
                         tls_args=(context, "127.0.0.1"))
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.dul.socket.socket.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        assoc.release()


def test_plain_connection_to_the_tls_port_is_refused(
        tls_node_factory: Callable[..., TlsNode], certs: Certs, dcmtk: Dcmtk,
        caplog: pytest.LogCaptureFixture) -> None:
    node = tls_node_factory({"dimse": {"allow_any_ae": True}})
    caplog.set_level("WARNING", logger="support_node.dimse")
    plain = dcmtk("echoscu", "-to", "10", "-aec", node.ae_title, "127.0.0.1",
                  str(node.tls_port), timeout=30)
    assert plain.returncode != 0
    assert logged(caplog, "refused a TLS connection from 127.0.0.1: handshake failed")
    # The plain port stays plain.
    assert dcmtk("echoscu", "-aec", node.ae_title, "127.0.0.1", str(node.port)).returncode == 0


def test_unknown_or_missing_client_certificates_are_refused(
        tls_node_factory: Callable[..., TlsNode], certs: Certs, dcmtk: Dcmtk,
        caplog: pytest.LogCaptureFixture) -> None:
    node = tls_node_factory({"dimse": {"allow_any_ae": True}})
    caplog.set_level("WARNING", logger="support_node.dimse")
    # Same subject as hospa's, from a CA the node does not trust.
    assert tls_echo(dcmtk, node, certs, certs.rogue).returncode != 0
    assert logged(caplog, "(CERTIFICATE_VERIFY_FAILED)")
    assert tls_echo(dcmtk, node, certs, None).returncode != 0  # no certificate at all
    assert logged(caplog, "PEER_DID_NOT_RETURN_A_CERTIFICATE")
    assert tls_echo(dcmtk, node, certs, certs.hospb).returncode == 0


def test_a_caller_bound_to_a_certificate_needs_that_certificate(
        tls_node_factory: Callable[..., TlsNode], certs: Certs, dcmtk: Dcmtk,
        caplog: pytest.LogCaptureFixture) -> None:
    sha = certs.fingerprint(certs.hospb[1])
    node = tls_node_factory({"dimse": {"callers": {
        "HOSP_A": {"hospital": "hospa", "cert_cn": "ct1.hospa.example"},
        "HOSP_B": {"hospital": "hospb", "cert_sha256": sha}}}}, require_client_cert=False)
    caplog.set_level("WARNING", logger="support_node.dimse")
    # hospb's valid certificate does not make its holder HOSP_A, nor does none at all.
    wrong = tls_echo(dcmtk, node, certs, certs.hospb, calling="HOSP_A")
    assert "Calling AE Title Not Recognized" in wrong.stderr
    assert logged(caplog, "client certificate does not match the calling AE title")
    assert tls_echo(dcmtk, node, certs, None, calling="HOSP_A").returncode != 0
    plain = dcmtk("echoscu", "-aet", "HOSP_A", "-aec", node.ae_title, "127.0.0.1",
                  str(node.port))
    assert "Calling AE Title Not Recognized" in plain.stderr
    assert logged(caplog, "calling AE title needs its client certificate over TLS")
    assert tls_echo(dcmtk, node, certs, certs.hospa, calling="HOSP_A").returncode == 0
    assert tls_echo(dcmtk, node, certs, certs.hospb, calling="HOSP_B").returncode == 0


def test_a_client_stalling_in_the_handshake_blocks_nobody(
        tls_node_factory: Callable[..., TlsNode], certs: Certs, dcmtk: Dcmtk) -> None:
    node = tls_node_factory({"dimse": {"allow_any_ae": True,
                                       "association_request_timeout": 6}})
    stalled = socket.create_connection(("127.0.0.1", node.tls_port))
    stalled.settimeout(10)
    try:
        time.sleep(0.2)  # accepted by now: a handshake in the accept loop would wait on it
        started = time.monotonic()
        assert tls_echo(dcmtk, node, certs, certs.hospa).returncode == 0
        # blocked behind the stalled client it would take the 6 s request timeout; the
        # margin is for a loaded machine, where dcmtk's own TLS start-up alone took 1.5 s
        assert time.monotonic() - started < 4
        assert stalled.recv(1) == b""  # closed once the request timeout has passed
    finally:
        stalled.close()
