"""The admin CLI through its runner: what an operator types, sees, and gets back."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from typer.testing import CliRunner, Result

from node.api import Node
from node.layout import ORIGINAL
from node.settings import ENV_PREFIX
from pipelines import synthetic
from tests.fixtures.node import pydicom_test_files

runner = CliRunner()

# pydicom files the node must refuse: cut short, a stray leading byte (no_meta.dcm), or data
# set fragments for pydicom's unit tests that carry no SOP Instance UID.
REFUSED = {"MR_truncated.dcm", "rtplan_truncated.dcm", "no_meta.dcm", "UN_sequence.dcm",
           "empty_charset_LEI.dcm", "meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm",
           "no_meta_group_length.dcm", "priv_SQ.dcm"}
PATIENT_A = synthetic.Patient(patient_id="PAT-A", name="Alpha^Ann")
PATIENT_B = synthetic.Patient(patient_id="PAT-B", name="Beta^Bob")


def cli(*args: str | Path) -> Result:
    return runner.invoke(_app(), [str(a) for a in args])


def _app() -> Any:
    from node.cli import app
    return app


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def ls_json(home: Path, *parts: str) -> list[dict[str, Any]]:
    result = cli("ls", *parts, "--json", "--home", home)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SUPPORT_NODE_* from the outer shell; the root logger as it was (commands set it)."""
    import os
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def generated_study(folder: Path, patient: synthetic.Patient, series: int = 3,
                    per_series: int = 2, seed: int = 0) -> list[Path]:
    return [synthetic.write(ds, folder) for ds in
            synthetic.ct_study(patient, series=series, per_series=per_series, size=64, seed=seed)]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A home into which every pydicom test file and a 3-series CT study were imported."""
    base = tmp_path_factory.mktemp("imported")
    source = base / "in"
    source.mkdir()
    for n, path in enumerate(pydicom_test_files()):
        shutil.copy(path, source / f"{n:03d}_{path.name}")
    study = generated_study(source / "ct", PATIENT_A, series=3, per_series=2)
    home = base / "home"
    assert cli("init", "--home", home).exit_code == 0
    result = cli("import", source, "--home", home)
    return {"home": home, "source": source, "study": study, "result": result}


# -- init and keys ---------------------------------------------------------------------------

def _key_material(home: Path) -> list[str]:
    doc = json.loads((home / "keys.json").read_text())
    return [k["material"] for k in doc["keys"]] + [doc["pseudonym_key"]]


def test_init_creates_a_private_key_file_and_shows_no_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = cli("init", "--home", home)
    assert result.exit_code == 0, result.output
    keys = home / "keys.json"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700  # the index holds patient names
    assert str(keys) in result.output
    material = _key_material(home)
    assert all(m and m not in result.output for m in material)
    again = cli("init", "--home", home)
    assert again.exit_code == 0 and "kept the existing" in again.output
    assert _key_material(home) == material  # never overwritten


def test_init_with_256_bit_keys(tmp_path: Path) -> None:
    assert cli("init", "--home", tmp_path, "--bits", "256").exit_code == 0
    doc = json.loads((tmp_path / "keys.json").read_text())
    assert [k["bits"] for k in doc["keys"]] == [256]


def test_keys_list_shows_ids_not_material(tmp_path: Path) -> None:
    cli("init", "--home", tmp_path)
    result = cli("keys", "list", "--home", tmp_path)
    assert result.exit_code == 0, result.output
    assert re.search(r"^\s*1\s+128\s+\S+\s+yes\s*$", result.output, re.M)
    assert all(m not in result.output for m in _key_material(tmp_path))


def test_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    for command in (["ls"], ["get", "default", "--out", str(tmp_path / "o")], ["verify"],
                    ["keys", "list"], ["reindex"]):
        result = cli(*command, "--home", tmp_path / "nothing-here")
        assert result.exit_code == 3, (command, result.output)
        assert "key file not found" in result.output
        assert str(tmp_path / "nothing-here" / "keys.json") in result.output
        no_traceback(result)
    assert not (tmp_path / "nothing-here").exists()  # a mistyped --home leaves no folder


def test_serve_in_a_home_init_did_not_make_is_refused(tmp_path: Path) -> None:
    typo = tmp_path / "vra"  # meant ./var
    result = cli("serve", "--home", typo, "--dimse-port", "0", "--http-port", "0")
    assert result.exit_code == 3, result.output
    assert f"{typo} is not a node's home" in result.output
    assert "support-node init --home" in result.output and "serve --init" in result.output
    no_traceback(result)
    assert not typo.exists()  # no new key, no empty store


def test_a_home_with_data_but_no_key_file_never_gets_a_new_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    study = generated_study(tmp_path / "ct", PATIENT_A, series=1, per_series=1)
    assert cli("import", *study, "--home", home).exit_code == 0
    (home / "keys.json").rename(tmp_path / "keys.json.moved")  # lost, or --config elsewhere
    for command in (["serve", "--init", "--dimse-port", "0", "--http-port", "0"], ["init"],
                    ["import", *study]):
        result = cli(*command, "--home", home)
        assert result.exit_code == 3, (command, result.output)
        assert f"key file not found: {home / 'keys.json'}" in result.output
        assert f"store {home / 'store'}" in result.output and "Restore the key file" \
            in result.output
        no_traceback(result)
        assert not (home / "keys.json").exists()
    (tmp_path / "keys.json.moved").rename(home / "keys.json")
    assert len(ls_json(home)) == 1  # still readable with its own key


def test_unknown_config_key_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[dimse]\nprot = 104\n")
    result = cli("ls", "--home", tmp_path, "--config", config)
    assert result.exit_code == 2
    assert "dimse.prot" in result.output
    no_traceback(result)


# -- import and get ---------------------------------------------------------------------------

def test_import_reports_what_it_refused(imported: dict[str, Any]) -> None:
    result = imported["result"]
    assert result.exit_code == 1, result.output  # some of pydicom's files are broken
    refused = set(re.findall(r"refused \S+/\d{3}_(\S+?):", result.output))
    assert refused == REFUSED
    total = len(pydicom_test_files()) + len(imported["study"])
    assert f"imported {total} files:" in result.output
    no_traceback(result)


def test_get_gives_back_every_imported_file_byte_for_byte(imported: dict[str, Any],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("get", "default", "--out", out, "--home", imported["home"])
    assert result.exit_code == 0, result.output
    sent = {sha(p.read_bytes()) for p in files_under(imported["source"])
            if not any(p.name.endswith("_" + name) for name in REFUSED)}
    got = [p for p in files_under(out)]
    assert {sha(p.read_bytes()) for p in got} == sent
    assert len(got) == len(sent)  # every distinct file once: duplicates are not repeated
    conflicts = [p for p in got if ".conflict-" in p.name]
    assert conflicts  # pydicom's files share SOP Instance UIDs
    for path in conflicts:
        sop, digest = re.fullmatch(r"(.+)\.conflict-([0-9a-f]{12})\.dcm", path.name).groups()
        assert (path.parent / f"{sop}.dcm").is_file()
        assert sha(path.read_bytes()).startswith(digest)
        assert pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID == sop
    assert f"{len(got) - len(conflicts)} files and {len(conflicts)} conflict copies" \
        in result.output


def test_get_of_one_series_writes_the_hierarchy(imported: dict[str, Any],
                                                tmp_path: Path) -> None:
    first = pydicom.dcmread(imported["study"][0], stop_before_pixels=True)
    out = tmp_path / "series"
    result = cli("get", "default", PATIENT_A.patient_id, first.StudyInstanceUID,
                 first.SeriesInstanceUID, "--out", out, "--home", imported["home"])
    assert result.exit_code == 0, result.output
    written = files_under(out)
    assert len(written) == 2
    [pseudonym] = {p.relative_to(out).parts[1] for p in written}
    assert pseudonym != PATIENT_A.patient_id
    assert {p.relative_to(out).parts[2:4] for p in written} == {
        (first.StudyInstanceUID, first.SeriesInstanceUID)}
    study_shas = {sha(p.read_bytes()) for p in imported["study"]}
    assert {sha(p.read_bytes()) for p in written} <= study_shas


def test_an_empty_answer_is_the_same_for_get_and_ls(imported: dict[str, Any],
                                                    tmp_path: Path) -> None:
    # Nothing matched is an answer, not a failure, for both (node/cli/browse.py): exit 0,
    # the same message on stderr, naming what was asked but not its values.
    home = imported["home"]
    asked = ["default", "--accession", "NO-SUCH-ACC", "--patient-name", "nobody*"]
    got = cli("get", *asked, "--out", tmp_path / "o", "--home", home)
    listed = cli("ls", *asked, "--home", home)
    for result in (got, listed):
        assert result.exit_code == 0, result.output
        assert "nothing matched the hospital, --patient-name and --accession given" \
            in result.stderr
        assert "NO-SUCH-ACC" not in result.output and "nobody" not in result.output
    assert "wrote 0 files" in got.stdout and not (tmp_path / "o").exists()
    assert listed.stdout.strip() == "0 instances"
    assert cli("ls", *asked, "--json", "--home", home).stdout == ""
    nowhere = cli("get", "no-such-hospital", "--out", tmp_path / "o", "--home", home)
    assert nowhere.exit_code == 0 and "nothing matched the hospital given" in nowhere.stderr


def test_import_of_a_non_dicom_file_is_refused(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n" * 20)
    study = generated_study(tmp_path / "ct", PATIENT_A, series=1, per_series=1)
    result = cli("import", notes, *study, "--home", tmp_path / "home")
    assert result.exit_code == 1
    assert re.search(r"refused \S*notes\.txt", result.output)
    assert "1 refused" in result.output and "1 stored" in result.output
    no_traceback(result)
    assert len(ls_json(tmp_path / "home")) == 1


@pytest.mark.parametrize("hospital", ["../x", "St Mary's", "a/b", ""])
def test_import_under_an_unusable_hospital_name_is_refused(tmp_path: Path, hospital: str
                                                            ) -> None:
    study = generated_study(tmp_path / "ct", PATIENT_A, series=1, per_series=1)
    result = cli("import", *study, "--home", tmp_path / "home", "--hospital", hospital)
    assert result.exit_code == 2
    assert "--hospital" in result.output
    no_traceback(result)
    assert not (tmp_path / "home" / "store").exists() or \
        files_under(tmp_path / "home" / "store") == []


def test_import_twice_stores_once(tmp_path: Path) -> None:
    study = generated_study(tmp_path / "ct", PATIENT_A, series=1, per_series=2)
    home = tmp_path / "home"
    assert "2 stored" in cli("import", tmp_path / "ct", "--home", home).output
    objects = files_under(home / "store")
    again = cli("import", tmp_path / "ct", "--home", home)
    assert again.exit_code == 0
    assert "2 duplicate" in again.output
    assert files_under(home / "store") == objects
    assert len(ls_json(home)) == len(study)


def test_import_of_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("import", tmp_path / "absent.dcm", "--home", tmp_path / "home")
    assert result.exit_code == 2
    assert "absent.dcm" in result.output
    no_traceback(result)


# -- ls -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_hospitals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("ls")
    home = base / "home"
    a = generated_study(base / "a", PATIENT_A, series=3, per_series=2, seed=1)
    b = generated_study(base / "b", PATIENT_B, series=1, per_series=2, seed=2)
    assert cli("import", base / "a", "--home", home).exit_code == 0
    assert cli("import", base / "b", "--home", home, "--hospital", "st-marys").exit_code == 0
    return {"home": home, "a": [pydicom.dcmread(p, stop_before_pixels=True) for p in a],
            "b": [pydicom.dcmread(p, stop_before_pixels=True) for p in b]}


def _count(home: Path, *parts: str) -> int:
    result = cli("ls", *parts, "--home", home)
    assert result.exit_code == 0, result.output
    match = re.search(r"^(\d+) instances?", result.output, re.M)
    assert match, result.output
    assert len(ls_json(home, *parts)) == int(match.group(1))
    return int(match.group(1))


def test_ls_at_each_level_lists_the_right_count(two_hospitals: dict[str, Any]) -> None:
    home = two_hospitals["home"]
    first = two_hospitals["a"][0]
    pseudonym = ls_json(home, "default")[0]["patient_key"]
    assert pseudonym != PATIENT_A.patient_id
    assert _count(home) == 8
    assert _count(home, "default") == 6
    assert _count(home, "st-marys") == 2
    assert _count(home, "default", PATIENT_A.patient_id) == 6
    assert _count(home, "default", pseudonym) == 6
    assert _count(home, "default", pseudonym, first.StudyInstanceUID) == 6
    assert _count(home, "default", PATIENT_A.patient_id, first.StudyInstanceUID,
                  first.SeriesInstanceUID) == 2
    assert _count(home, "default", pseudonym, first.StudyInstanceUID, first.SeriesInstanceUID,
                  first.SOPInstanceUID) == 1
    assert _count(home, "default", PATIENT_B.patient_id) == 0  # B is at st-marys
    assert _count(home, "st-marys", PATIENT_B.patient_id) == 2
    assert _count(home, "nowhere") == 0


def test_ls_json_lines_carry_what_scripts_rely_on(two_hospitals: dict[str, Any]) -> None:
    docs = ls_json(two_hospitals["home"])
    sent = {ds.SOPInstanceUID for ds in two_hospitals["a"] + two_hospitals["b"]}
    assert {d["sop_instance_uid"] for d in docs} == sent
    for d in docs:
        assert d["state"] == "queued"  # no worker has run yet
        assert d["blank"] is False
        assert d["sop_instance_uid"] == d["sop_uid"]
        assert d["object_key"].endswith("/" + d["sop_instance_uid"])
        assert re.fullmatch(r"[0-9a-f]{64}", d["sha256"])
        assert d["conflicts"] == []
        assert d["received_at"].endswith("+00:00")


def test_ls_json_reports_conflicts(imported: dict[str, Any]) -> None:
    docs = ls_json(imported["home"])
    with_conflicts = [d for d in docs if d["conflicts"]]
    assert with_conflicts
    for d in with_conflicts:
        for c in d["conflicts"]:
            assert c["sop_uid"] == d["sop_instance_uid"]
            assert c["sha256"] != d["sha256"]
            assert c["object_key"] == f"{d['object_key']}/conflicts/{c['sha256']}"
    table = cli("ls", "--home", imported["home"])
    assert f"{len(with_conflicts)} with conflicts" in table.output
    # pydicom's files: long Patient IDs, names, modalities: still 80 columns, notes whole
    assert max(len(line) for line in table.output.splitlines()) <= 80
    assert table.output.count(" CONFLICT") == len(with_conflicts)


def test_ls_wide_shows_whole_uids_to_pass_on(two_hospitals: dict[str, Any]) -> None:
    # The runner's terminal is 80 columns wide; a UID cut short could not be given to `get`.
    home = two_hospitals["home"]
    result = cli("ls", "default", "--wide", "--home", home)
    pseudonym = ls_json(home, "default")[0]["patient_key"]
    rows = [line.split() for line in result.output.splitlines() if line.startswith(" default")]
    assert len(rows) == 6
    for ds in two_hospitals["a"]:
        row = next(r for r in rows if r[4] == ds.SOPInstanceUID)
        assert row[:4] == ["default", pseudonym, ds.StudyInstanceUID, ds.SeriesInstanceUID]
        assert row[5] == "CT"
        assert row[-5:] == [PATIENT_A.patient_id, str(PATIENT_A.name), "2024-01-15",
                            str(ds.SeriesNumber), str(ds.InstanceNumber)]


def test_ls_by_default_fits_80_columns_and_names_the_patients(two_hospitals: dict[str, Any]
                                                              ) -> None:
    home = two_hospitals["home"]
    result = cli("ls", "--home", home)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].split() == ["hospital", "patient", "ID", "name", "date", "mod", "series",
                                "inst", "state"]
    rows = [line.split() for line in lines[1:-1]]
    expected = sorted(("default" if ds in two_hospitals["a"] else "st-marys",
                       ds.PatientID, str(ds.PatientName), "2024-01-15", "CT",
                       str(ds.SeriesNumber), str(ds.InstanceNumber), "queued")
                      for ds in two_hospitals["a"] + two_hospitals["b"])
    assert sorted(tuple(r) for r in rows) == expected
    assert lines[-1] == "8 instances in 2 hospitals: 2 patients, 2 studies, 4 series"
    one = cli("ls", "st-marys", PATIENT_B.patient_id, "--home", home,
              "--study-date", "20240101-20240131")
    assert one.output.splitlines()[0].split()[:3] == ["patient", "ID", "name"]  # one hospital
    assert one.output.splitlines()[-1] == "2 instances in st-marys: 1 patient, 1 study, 1 series"
    sop = two_hospitals["b"][0].SOPInstanceUID
    single = cli("ls", "st-marys", PATIENT_B.patient_id, two_hospitals["b"][0].StudyInstanceUID,
                 two_hospitals["b"][0].SeriesInstanceUID, sop, "--home", home)
    assert single.output.splitlines()[-1] == "1 instance in st-marys: 1 patient, 1 study, 1 series"


def test_ls_of_an_unknown_patient_lists_nothing(two_hospitals: dict[str, Any]) -> None:
    result = cli("ls", "default", "../etc", "--home", two_hospitals["home"])
    assert result.exit_code == 0
    assert "0 instances" in result.output
    no_traceback(result)


# -- verify, reindex, rotate ----------------------------------------------------------------

@pytest.fixture
def copy_of_imported(imported: dict[str, Any], tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(imported["home"], home)
    return home


def test_verify_passes_on_a_clean_store(copy_of_imported: Path) -> None:
    result = cli("verify", "--home", copy_of_imported)
    assert result.exit_code == 0, result.output
    assert re.search(r"verified (\d+) objects: \1 ok, 0 failed", result.output)


def test_verify_names_a_tampered_object(copy_of_imported: Path) -> None:
    rec = ls_json(copy_of_imported)[3]
    key = f"{rec['object_key']}/{ORIGINAL}"
    path = copy_of_imported / "store" / key
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(blob))
    result = cli("verify", "--home", copy_of_imported)
    assert result.exit_code == 1
    assert f"FAILED {key}" in result.output
    assert "1 failed" in result.output
    no_traceback(result)
    out = copy_of_imported.parent / "o"
    got = cli("get", "default", "--out", out, "--home", copy_of_imported)
    assert got.exit_code == 3  # never hands out wrong bytes
    assert "failed authentication" in got.output and key in got.output
    no_traceback(got)
    assert not list(out.rglob(f"{rec['sop_instance_uid']}.dcm*"))  # nor a partial file


def test_reindex_after_losing_the_index_restores_the_listing(copy_of_imported: Path) -> None:
    before = cli("ls", "--json", "--home", copy_of_imported).stdout
    assert before.count("\n") > 40
    for path in copy_of_imported.glob("index.sqlite*"):
        path.unlink()
    assert cli("ls", "--json", "--home", copy_of_imported).stdout == ""
    result = cli("reindex", "--home", copy_of_imported)
    assert result.exit_code == 0, result.output
    assert re.search(r"reindexed: \d+ conflict, \d+ instance", result.output)
    assert cli("ls", "--json", "--home", copy_of_imported).stdout == before
    # The series watch must not take the whole archive for newly arrived series (with
    # segment.model set it would segment all of it again).
    from datetime import UTC, datetime, timedelta

    from node.api import Node
    from node.index.series_watch import complete_series
    with Node.open(home=copy_of_imported) as node:
        later = datetime.now(UTC) + timedelta(days=1)
        assert complete_series(node.core.catalog, later, 1, "unet/1") == []


def test_rotate_and_reencrypt_moves_every_object_to_the_new_key(copy_of_imported: Path,
                                                                tmp_path: Path) -> None:
    home = copy_of_imported
    first = tmp_path / "first"
    assert cli("get", "default", "--out", first, "--home", home).exit_code == 0
    result = cli("keys", "rotate", "--reencrypt", "--home", home)
    assert result.exit_code == 0, result.output
    assert "key 2 (128 bits) is now active" in result.output
    assert stat.S_IMODE((home / "keys.json").stat().st_mode) == 0o600
    assert re.search(r"re-encrypted (\d+) of \1 objects", result.output)
    assert all(m not in result.output for m in _key_material(home))
    listing = cli("keys", "list", "--home", home).output
    assert re.search(r"^\s*2\s+128\s+\S+\s+yes\s*$", listing, re.M)
    assert re.search(r"^\s*1\s+128\s+\S+\s*$", listing, re.M)  # kept, no longer active

    assert cli("verify", "--home", home).exit_code == 0
    second = tmp_path / "second"
    assert cli("get", "default", "--out", second, "--home", home).exit_code == 0
    assert [(p.relative_to(first), p.read_bytes()) for p in files_under(first)] == \
        [(p.relative_to(second), p.read_bytes()) for p in files_under(second)]
    with Node.open(home=home) as node:
        objects = node.objects()
        assert objects and all(node.core.fs.key_id(k) == 2 for k in objects)


def test_rotate_without_reencrypt_keeps_old_objects_readable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    study = generated_study(tmp_path / "ct", PATIENT_A, series=1, per_series=1)
    assert cli("import", *study, "--home", home).exit_code == 0
    assert cli("keys", "rotate", "--home", home).exit_code == 0
    more = generated_study(tmp_path / "ct2", PATIENT_A, series=1, per_series=1, seed=9)
    assert cli("import", *more, "--home", home).exit_code == 0
    with Node.open(home=home) as node:
        ids = {node.core.fs.key_id(k) for k in node.objects()}
    assert ids == {1, 2}
    assert cli("verify", "--home", home).exit_code == 0
    out = tmp_path / "out"
    assert cli("get", "default", "--out", out, "--home", home).exit_code == 0
    assert {sha(p.read_bytes()) for p in files_under(out)} == \
        {sha(p.read_bytes()) for p in study + more}


def test_ls_and_get_accept_a_query(two_hospitals: dict[str, Any], tmp_path: Path) -> None:
    home = two_hospitals["home"]
    family = str(PATIENT_A.name).split("^")[0]
    by_name = ls_json(home, "--patient-name", family.lower() + "*")
    assert {d["patient_name"] for d in by_name} == {PATIENT_A.name} and len(by_name) == 6
    assert len(ls_json(home, "--study-date", "20240101-20240131", "--modality", "CT")) == 8
    assert ls_json(home, "--study-date", "-20231231") == []
    assert len(ls_json(home, "st-marys", "--accession", "ACC-0001")) == 2  # hospital narrows
    result = cli("get", "default", "--patient-name", family + "*", "--out", tmp_path / "out",
                 "--home", home)
    assert result.exit_code == 0, result.output
    assert len(files_under(tmp_path / "out")) == 6
    bad = cli("ls", "--study-date", "2024-01", "--home", home)
    assert bad.exit_code == 2 and "query:" in bad.output
    no_traceback(bad)
