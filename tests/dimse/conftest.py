"""Fixtures for the DIMSE edge's guards: test certificates, nodes with a TLS listener."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from node import wiring
from node.api import Node
from node.settings import Settings
from tests.test_qr import destination  # noqa: F401  (a fixture: storescp as DEST)


@dataclass(frozen=True)
class Certs:
    """PEM files made for one test session (never committed).

    ``ca``: the CA the node trusts for clients and that signed its own certificate;
    ``server``: the node's (CN and SAN 127.0.0.1); ``hospa`` / ``hospb``: client
    certificates from that CA; ``rogue``: a client certificate with hospa's CN from
    another CA.
    """

    folder: Path
    ca: Path
    server: tuple[Path, Path]  # (key, cert)
    hospa: tuple[Path, Path]
    hospb: tuple[Path, Path]
    rogue: tuple[Path, Path]

    def fingerprint(self, cert: Path) -> str:
        out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint",
                              "-sha256"], capture_output=True, text=True, check=True).stdout
        return out.strip().split("=", 1)[1]


def _openssl(*args: str) -> None:
    made = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make test certificates: {made.stderr[-300:]!r}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key),
             "-out", str(cert), "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return key, cert


def _signed(folder: Path, name: str, cn: str, ca: tuple[Path, Path],
            extensions: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={cn}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
             "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext))
    return key, cert


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca = _ca(folder, "test-ca")
    other = _ca(folder, "rogue-ca")
    client = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    return Certs(
        folder=folder, ca=ca[1],
        server=_signed(folder, "node", "127.0.0.1", ca,
                       "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                       "subjectAltName=IP:127.0.0.1\n"),
        hospa=_signed(folder, "hospa", "ct1.hospa.example", ca, client),
        hospb=_signed(folder, "hospb", "ws.hospb.example", ca, client),
        rogue=_signed(folder, "rogue", "ct1.hospa.example", other, client),
    )


@dataclass
class TlsNode:
    node: Node
    port: int  # plain
    tls_port: int
    ae_title: str
    settings: Settings


@pytest.fixture
def tls_node_factory(settings_factory: Callable[..., Settings],
                     certs: Certs) -> Iterator[Callable[..., TlsNode]]:
    """``tls_node_factory(config, require_client_cert=True)``: a node on 127.0.0.1 with a
    plain and a TLS listener (OS-chosen ports); stopped after the test."""
    started: list[tuple[Any, Node]] = []

    def factory(config: dict[str, Any] | None = None,
                require_client_cert: bool = True) -> TlsNode:
        config = dict(config or {})
        dimse = {"host": "127.0.0.1", "port": 0, **config.pop("dimse", {})}
        dimse["tls"] = {"port": 0, "key": str(certs.server[0]), "cert": str(certs.server[1]),
                        "ca": str(certs.ca), "require_client_cert": require_client_cert}
        settings = settings_factory({"dimse": dimse, **config}, name=f"tls{len(started)}")
        node = Node.from_settings(settings, create_keys=True)
        service = wiring.start_dimse(node.core)
        started.append((service, node))
        return TlsNode(node, service.server_address[1], service.tls_address[1],
                       settings.dimse.ae_title, settings)

    yield factory
    for service, node in started:
        service.shutdown()
        node.close()
