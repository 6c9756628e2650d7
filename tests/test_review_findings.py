"""The outside review's smaller findings, each replayed through the real protocol."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from pipelines import synthetic
from tests.fixtures.node import RunningNode
from tests.test_qr import destination  # noqa: F401  (a fixture: storescp as DEST)

Dcmtk = Callable[..., subprocess.CompletedProcess[str]]


def test_a_wildcard_retrieve_key_moves_nothing(
        dimse_factory: Callable[..., RunningNode], dcmtk: Dcmtk,
        destination: tuple[int, Path], tmp_path: Path) -> None:  # noqa: F811
    """C-MOVE at PATIENT level with PatientID '?*' moved every patient; retrieve keys are
    single values or UID lists (PS3.4 C.4.2.2.1), so it is refused and nothing moves."""
    node = dimse_factory({"destinations": {"DEST": {"host": "127.0.0.1",
                                                    "port": destination[0]}}})
    for n, pid in enumerate(("P-1", "P-2")):
        for ds in synthetic.ct_study(synthetic.Patient(pid, f"Name^{n}"), series=1,
                                     per_series=1, size=32, seed=n):
            node.node.write(synthetic.write(ds, tmp_path / "src").read_bytes())

    def move(*keys: str) -> subprocess.CompletedProcess[str]:
        args = [a for k in keys for a in ("-k", k)]
        return dcmtk("movescu", "-P", "-v", "-aem", "DEST", "-aec", node.ae_title, *args,
                     "127.0.0.1", str(node.port))

    for pattern in ("?*", "P-*", "P-1\\P-2"):
        refused = move("QueryRetrieveLevel=PATIENT", f"PatientID={pattern}")
        assert "DataSetDoesNotMatchSOPClass" in refused.stdout + refused.stderr, refused.stderr
    assert not [p for p in destination[1].rglob("*") if p.is_file()]
    moved = move("QueryRetrieveLevel=PATIENT", "PatientID=P-1")  # a single value still works
    assert moved.returncode == 0, moved.stderr
    assert len([p for p in destination[1].rglob("*") if p.is_file()]) == 1
