"""The node's files are its owner's only: created 0600 / 0700 whatever the umask it was started
with, and a home that others can already read (made by an older version, or by hand) is named
in a warning when `serve` starts, without any patient data in it."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

from pipelines import synthetic
from tests.test_key_rotation_live import _env
from tests.test_serve import READY, SUPPORT_NODE, Served

PATIENT = synthetic.Patient("PAT-MODES", "Private^Paula", "19550505", "F")


def as_operator_with_umask_022(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SUPPORT_NODE), *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=120, check=False,
                          preexec_fn=lambda: os.umask(0o022))


def modes_under(folder: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(folder.stat().st_mode)}
    for path in folder.rglob("*"):
        out[str(path.relative_to(folder))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def _import_study(tmp_path: Path, home: Path) -> None:
    files = [synthetic.write(ds, tmp_path / "src") for ds in
             synthetic.ct_study(PATIENT, series=1, per_series=2, size=64, seed=51)]
    done = as_operator_with_umask_022("import", *files, "--home", home)
    assert done.returncode == 0, done.stdout + done.stderr


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _import_study(tmp_path, home)
    out = tmp_path / "export"
    got = as_operator_with_umask_022("get", "default", "--out", out, "--home", home)
    assert got.returncode == 0, got.stdout + got.stderr
    for folder in (home, out):
        modes = modes_under(folder)
        assert len(modes) > 5
        wide = {name: f"{mode:04o}" for name, mode in modes.items() if mode & 0o077}
        assert wide == {}
    assert modes_under(home)["index.sqlite"] == 0o600


def test_serve_warns_about_a_home_others_can_read(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _import_study(tmp_path, home)
    home.chmod(0o755)  # as an older version left it, or an operator's mkdir
    (home / "index.sqlite").chmod(0o644)
    served = Served("--dimse-port", "0", "--processing-workers", "0", home=home)
    try:
        served.wait_for(READY, timeout=60)
    finally:
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(30)
    log = served.output()
    [warning] = [line for line in log.splitlines() if "accessible by group or others" in line]
    assert f"{home} (0755)" in warning and f"{home / 'index.sqlite'} (0644)" in warning
    assert f"chmod -R go-rwx {home}" in warning
    for phi in (PATIENT.name, "Private", PATIENT.patient_id, PATIENT.birth_date):
        assert phi not in log
    verify = as_operator_with_umask_022("verify", "--home", home)
    assert "accessible by group or others" in verify.stderr + verify.stdout
