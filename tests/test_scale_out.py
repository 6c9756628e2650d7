"""The scale-out configuration end to end: S3 (SeaweedFS) for objects, PostgreSQL for the index."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines import synthetic
from tests.fixtures.node import RunningNode
from tests.test_dimse import dataset_bytes, storescu

Dcmtk = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def scale_out_config(
        s3_server: Any, s3_root: str, postgres_server: Any) -> Iterator[dict[str, Any]]:
    with postgres_server.database() as index_url:
        yield {
            "store": {"url": f"s3://{s3_root}", "options": {
                "endpoint_url": s3_server.endpoint_url, "key": s3_server.key,
                "secret": s3_server.secret}},
            "index": {"url": index_url},
        }


def test_c_store_into_s3_and_postgresql_and_read_back(
        dimse_factory: Callable[..., RunningNode], scale_out_config: dict[str, Any],
        s3_server: Any, s3_root: str, dcmtk: Dcmtk, tmp_path: Path) -> None:
    node = dimse_factory(scale_out_config)
    study = synthetic.ct_study(series=2, per_series=3, size=64)
    files = [synthetic.write(ds, tmp_path) for ds in study]
    result = storescu(dcmtk, node, files)
    assert result.returncode == 0, result.stderr
    records = list(node.node.ls("default"))
    assert len(records) == 6
    sent = {dataset_bytes(p.read_bytes()) for p in files}
    assert {dataset_bytes(node.node.read_original(r)) for r in records} == sent
    # The bucket holds ciphertext only, under pseudonymous names.
    raw = s3_server.filesystem()
    keys = raw.find(s3_root)
    assert len(keys) == 12  # original + description per instance
    for key in keys:
        assert "PAT-0001" not in key
        assert b"Doe^Jane" not in raw.cat_file(key)
