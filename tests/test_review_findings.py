"""The outside review's smaller findings, each replayed through the real protocol."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
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


def test_library_warnings_go_to_the_log_without_the_values(tmp_path: Path) -> None:
    """pydicom's "Invalid value for VR UI: '<patient name>'" went to stderr around the log
    (the review saw it during ``import``); now warnings go through the log, the quoted
    value replaced, in every process that sets up logging as the node does."""
    ds = synthetic.ct_study(synthetic.Patient("WARN-1", "Smith^Alice"), series=1,
                            per_series=1, size=32, seed=9)[0]
    ds.add_new(0x00200052, "UI", "Smith^Alice")  # a UI element holding the name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = synthetic.write(ds, tmp_path / "src")
    script = ("from node import logs; logs.configure('WARNING'); import pydicom, sys; "
              "ds = pydicom.dcmread(sys.argv[1]); ds.FrameOfReferenceUID")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True, timeout=60, check=False,
                            env={**os.environ, "PYTHONWARNINGS": "always"})
    assert result.returncode == 0, result.stderr
    assert "Smith" not in result.stderr
    assert "py.warnings" in result.stderr and "Invalid value for VR UI: '…'" in result.stderr
