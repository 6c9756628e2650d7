"""A node serving DIMSE and DICOMweb on loopback ports the OS chose, stopped after the test."""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from node import wiring
from node.api import Node
from node.settings import Settings
from tests.test_qr import destination  # noqa: F401  (a fixture: storescp as DEST)
from tests.test_serve import served  # noqa: F401  (a fixture: serve processes, stopped after)


@dataclass
class WebNode:
    node: Node
    url: str  # the DICOMweb root
    dimse_port: int
    settings: Settings

    @property
    def root(self) -> str:
        return self.url.rsplit("/dicom-web", 1)[0]


@pytest.fixture
def web_factory(settings_factory: Callable[..., Settings]) -> Iterator[Callable[..., WebNode]]:
    started: list[tuple[Any, Any, Node]] = []

    def factory(config: dict[str, Any] | None = None, name: str = "home") -> WebNode:
        config = dict(config or {})
        dimse = {"host": "127.0.0.1", "port": 0, **config.pop("dimse", {})}
        settings = settings_factory({"dimse": dimse, **config}, name=name)
        node = Node.from_settings(settings, create_keys=True)
        scp = wiring.start_dimse(node.core)
        web = wiring.start_web(node.core, port=0)
        started.append((scp, web, node))
        return WebNode(node, web.url, scp.server_address[1], settings)

    yield factory
    for scp, web, node in started:
        web.shutdown()
        scp.shutdown()
        node.close()


@pytest.fixture
def web_node(web_factory: Callable[..., WebNode]) -> WebNode:
    return web_factory()


def multipart(parts: list[bytes], part_type: str = "application/dicom"
              ) -> tuple[bytes, str]:
    """A STOW-RS body of ``parts`` and its Content-Type."""
    boundary = secrets.token_hex(8)
    body = io.BytesIO()
    for data in parts:
        body.write(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode())
        body.write(data)
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f'multipart/related; type="{part_type}"; boundary={boundary}'


def stow(url: str, parts: list[bytes], headers: dict[str, str] | None = None,
         path: str = "/studies") -> requests.Response:
    body, content_type = multipart(parts)
    return requests.post(url + path, data=body, timeout=60,
                         headers={"Content-Type": content_type, **(headers or {})})


def split_multipart(response: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related response: (headers, body) each."""
    content_type = response.headers["content-type"]
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    out = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        out.append((headers, body[:-2]))
    return out


def series_files(folder: Path, n: int = 4, size: int = 64, seed: int = 1,
                 patient: Any = None) -> list[Path]:
    from pipelines import synthetic
    return [synthetic.write(ds, folder) for ds in synthetic.ct_series(n, size=size,
                                                                      patient=patient,
                                                                      seed=seed)]
