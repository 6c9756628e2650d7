"""The one ingest path, as the node's users see it: what is kept, where, and what is refused.

Everything runs on the real components: the encrypted store over a local folder (and over
fsspec's memory filesystem where the backend does not matter) and the SQLite index.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from node.api import Node
from node.errors import CatalogError, IntegrityError, MalformedError, StoreError
from node.ingest import Outcome, Source
from node.layout import CONFLICTS, DESCRIPTION, ORIGINAL
from node.settings import Settings
from pipelines import synthetic
from tests.fixtures.node import PYDICOM_FILES

NAME = "Quixote^Zebulon"
PATIENT = synthetic.Patient(patient_id="PID-7734-ZQ", name=NAME, birth_date="19611203")
ACCESSION = "ACC-55129"


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def study(series: int = 1, per_series: int = 2, seed: int = 0,
          patient: synthetic.Patient = PATIENT) -> list[bytes]:
    datasets = synthetic.ct_study(patient, series=series, per_series=per_series, size=64,
                                  seed=seed)
    for ds in datasets:
        ds.AccessionNumber = ACCESSION
    return [encode(ds) for ds in datasets]


def variant(data: bytes, **changes: str) -> bytes:
    """The same instance (same SOP Instance UID) with some attributes changed."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return encode(ds)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_root(node: Node) -> Path:
    return Path(node.core.fs.root)


def files_on_disk(node: Node) -> dict[str, bytes]:
    """Every file under the local store folder, read with plain file I/O, by relative path."""
    root = store_root(node)
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


@pytest.fixture(params=["local", "memory"])
def any_node(request: pytest.FixtureRequest, settings_factory: Callable[..., Settings],
             tmp_path: Path) -> Iterator[Node]:
    """A node on a local folder, then on fsspec's memory filesystem; SQLite index both times."""
    config = {"store": {"url": f"memory://{tmp_path.name}"}} if request.param == "memory" \
        else None
    node = Node.from_settings(settings_factory(config), create_keys=True)
    yield node
    node.close()
    backend, root = node.core.fs.fs, node.core.fs.root
    if request.param == "memory" and backend.exists(root):
        backend.rm(root, recursive=True)


# -- stored, duplicate, conflict -------------------------------------------------------------

def test_stored_instance_is_listed_under_a_pseudonym(any_node: Node) -> None:
    data = study(per_series=1)[0]
    before = datetime.now(UTC)
    result = any_node.core.ingest.accept(
        data, Source(hospital="st-marys", via="dimse", who="CT_SCANNER_1"))
    after = datetime.now(UTC)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert result.outcome is Outcome.STORED
    assert result.sop_uid == ds.SOPInstanceUID

    [rec] = list(any_node.ls())
    assert rec.hospital == "st-marys"
    assert rec.patient_key != PATIENT.patient_id
    assert PATIENT.patient_id not in rec.object_key
    assert rec.object_key == "/".join(("st-marys", rec.patient_key, ds.StudyInstanceUID,
                                       ds.SeriesInstanceUID, ds.SOPInstanceUID))
    assert rec.patient_id == PATIENT.patient_id  # the index may hold it; names may not
    assert (rec.sha256, rec.size, rec.calling_ae) == (sha(data), len(data), "CT_SCANNER_1")
    assert list(any_node.ls("st-marys", PATIENT.patient_id)) == [rec]  # found by Patient ID
    assert list(any_node.ls("st-marys", rec.patient_key)) == [rec]
    assert list(any_node.ls("default")) == []

    doc = any_node.read_description(rec)
    assert doc["original"]["sha256"] == sha(data)
    assert doc["original"]["size"] == len(data)
    assert doc["received"]["calling_ae"] == "CT_SCANNER_1"
    assert doc["received"]["via"] == "dimse"
    assert before <= datetime.fromisoformat(doc["received"]["at"]) <= after
    assert doc["dicom"]["00100010"]["Value"] == [{"Alphabetic": NAME}]
    assert "7FE00010" not in doc["dicom"]  # no pixel data in the description
    assert any_node.read_original(rec) == data


def test_same_patient_same_pseudonym_other_patient_other_one(any_node: Node) -> None:
    first = study(series=2, per_series=1)
    other = study(per_series=1, seed=1, patient=synthetic.Patient(patient_id="PID-OTHER"))
    for data in first + other:
        any_node.write(data)
    keys = {rec.patient_key for rec in any_node.ls()}
    assert len(keys) == 2
    assert len(list(any_node.ls("default", PATIENT.patient_id))) == 2


def test_same_bytes_twice_is_a_duplicate_stored_once(any_node: Node) -> None:
    data = study(per_series=1)[0]
    assert any_node.write(data).outcome is Outcome.STORED
    objects = any_node.objects()
    again = any_node.write(data)
    assert again.outcome is Outcome.DUPLICATE
    assert any_node.objects() == objects
    assert sorted(k.rsplit("/", 1)[1] for k in objects) == [DESCRIPTION, ORIGINAL]
    assert len(list(any_node.ls())) == 1
    assert any_node.conflicts() == []


def test_same_uid_different_bytes_is_kept_as_a_conflict(any_node: Node) -> None:
    first = study(per_series=1)[0]
    second = variant(first, SeriesDescription="RECONSTRUCTED AGAIN")
    assert any_node.write(first).outcome is Outcome.STORED
    result = any_node.write(second)
    assert result.outcome is Outcome.CONFLICT

    [rec] = list(any_node.ls())
    assert any_node.read_original(rec) == first  # the first copy is untouched
    assert rec.sha256 == sha(first)
    [conflict] = any_node.conflicts()
    assert conflict.sop_uid == rec.sop_uid
    assert conflict.sha256 == sha(second)
    assert conflict.object_key == f"{rec.object_key}/{CONFLICTS}/{sha(second)}"
    assert result.object_key == conflict.object_key
    assert any_node.core.fs.cat_file(f"{conflict.object_key}/{ORIGINAL}") == second
    assert any_node.conflicts(rec.sop_uid) == [conflict]
    assert sorted(any_node.objects()) == sorted([
        f"{rec.object_key}/{ORIGINAL}", f"{rec.object_key}/{DESCRIPTION}",
        f"{conflict.object_key}/{ORIGINAL}", f"{conflict.object_key}/{DESCRIPTION}",
    ])
    # The same conflicting bytes again add nothing; a third version is a second conflict.
    objects = any_node.objects()
    assert any_node.write(second).outcome is Outcome.CONFLICT
    assert any_node.objects() == objects and len(any_node.conflicts()) == 1
    third = variant(first, SeriesDescription="THIRD")
    assert any_node.write(third).outcome is Outcome.CONFLICT
    assert {c.sha256 for c in any_node.conflicts()} == {sha(second), sha(third)}
    assert any_node.write(first).outcome is Outcome.DUPLICATE


def test_conflict_with_another_patient_id_stays_with_the_first_copy(any_node: Node) -> None:
    first = study(per_series=1)[0]
    second = variant(first, PatientID="PID-SOMEONE-ELSE")
    any_node.write(first)
    any_node.write(second)
    [rec] = list(any_node.ls())
    [conflict] = any_node.conflicts()
    assert conflict.object_key.startswith(rec.object_key + "/")
    assert "PID-SOMEONE-ELSE" not in conflict.object_key


def test_same_instance_on_many_associations_at_once(any_node: Node) -> None:
    data = study(per_series=1)[0]
    versions = [data] * 6 + [variant(data, SeriesDescription=f"V{n}") for n in range(3)]
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(versions))

    def send(payload: bytes) -> None:
        barrier.wait()
        try:
            outcomes.append(any_node.write(payload).outcome)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    [rec] = list(any_node.ls())
    assert outcomes.count(Outcome.STORED) == 1
    stored_first = any_node.read_original(rec)
    assert len(any_node.conflicts()) == len({sha(v) for v in versions}) - 1
    assert sha(stored_first) == rec.sha256
    assert len(any_node.objects()) == 2 * len({sha(v) for v in versions})


@pytest.mark.parametrize("hospital", ["../escape", "St Mary's", "a/b"])
def test_api_refuses_a_hospital_the_layout_cannot_hold(node_api: Node, hospital: str) -> None:
    with pytest.raises(ValueError, match="hospital"):
        node_api.write(study(per_series=1)[0], hospital=hospital)
    assert files_on_disk(node_api) == {}


def test_malformed_instance_stores_nothing(any_node: Node) -> None:
    data = study(per_series=1)[0]
    with pytest.raises(MalformedError):
        any_node.write(data[:-10])
    assert any_node.objects() == [] and list(any_node.ls()) == []


def test_derived_uids_file_an_instance_that_lacks_them(any_node: Node) -> None:
    data = (PYDICOM_FILES / "JPEGLSNearLossless_08.dcm").read_bytes()
    result = any_node.write(data)
    assert result.outcome is Outcome.STORED
    assert result.derived == ("StudyInstanceUID", "SeriesInstanceUID")
    [rec] = list(any_node.ls())
    assert rec.study_uid.startswith("2.25.") and rec.series_uid.startswith("2.25.")
    assert any_node.write(data).outcome is Outcome.DUPLICATE  # filed in the same place
    assert any_node.read_description(rec)["derived_uids"] == list(result.derived)


# -- what the store holds --------------------------------------------------------------------

def _pixel_bytes(data: bytes) -> bytes:
    return bytes(pydicom.dcmread(io.BytesIO(data)).PixelData)


def _shares_a_64_byte_run(pixels: bytes, blob: bytes) -> bool:
    # Any common run of 64 bytes contains one of these 32-byte aligned windows whole.
    return any(pixels[i : i + 32] in blob for i in range(0, len(pixels) - 31, 32))


def test_raw_stored_objects_carry_no_phi_and_no_pixels(node_api: Node) -> None:
    instances = study(series=2, per_series=2)
    instances.append(variant(instances[0], SeriesDescription="CONFLICTING COPY"))
    for data in instances:
        node_api.write(data)
    raw = files_on_disk(node_api)
    assert len(raw) == 2 * len(instances)
    phi = [NAME.encode(), b"Quixote", b"Zebulon", PATIENT.patient_id.encode(),
           ACCESSION.encode(), PATIENT.birth_date.encode()]
    pixels = [_pixel_bytes(d) for d in instances]
    # The detector finds what it looks for in the plaintext, so its silence below means it.
    assert _shares_a_64_byte_run(pixels[0], instances[0])
    assert all(p in instances[0] for p in phi[:4])
    for name, blob in raw.items():
        for word in phi:
            assert word not in blob, f"{word!r} readable in {name}"
            assert word.decode() not in name
        for p in pixels:
            assert not _shares_a_64_byte_run(p, blob), f"pixel bytes readable in {name}"


def test_object_names_carry_only_uids_and_pseudonyms(node_api: Node) -> None:
    for data in study(series=1, per_series=2):
        node_api.write(data)
    [first, *_] = list(node_api.ls())
    for key in files_on_disk(node_api):
        hospital, patient, study_uid, series_uid, sop, *rest = key.split("/")
        assert (hospital, patient, study_uid) == ("default", first.patient_key, first.study_uid)
        assert rest in ([ORIGINAL], [DESCRIPTION])
        for uid in (study_uid, series_uid, sop):
            assert set(uid) <= set("0123456789.")


def test_index_holds_no_rows_for_objects_it_did_not_keep(node_api: Node) -> None:
    data = study(per_series=1)[0]
    node_api.write(data)
    counts = node_api.core.catalog.counts()
    assert (counts["patients"], counts["studies"], counts["series"], counts["instances"]) \
        == (1, 1, 1, 1)


# -- failures leave nothing half-written -------------------------------------------------------

def _empty_index(node: Node) -> bool:
    return all(n == 0 for n in node.core.catalog.counts().values())


def test_store_failure_raises_and_indexes_nothing(node_api: Node) -> None:
    data = study(per_series=1)[0]
    blocker = store_root(node_api) / "default"
    blocker.write_bytes(b"a file where the hospital folder should be")  # mkdir fails (root too)
    with pytest.raises(StoreError):
        node_api.write(data)
    assert _empty_index(node_api)
    assert list(files_on_disk(node_api)) == ["default"]
    blocker.unlink()  # the store is back: the sender's retry succeeds
    assert node_api.write(data).outcome is Outcome.STORED
    assert len(list(node_api.ls())) == 1


def _sqlite(node: Node) -> sqlite3.Connection:
    return sqlite3.connect(node.core.settings.home / "index.sqlite", isolation_level=None)


def test_index_failure_raises_and_leaves_no_object(node_api: Node) -> None:
    data = study(per_series=1)[0]
    with _sqlite(node_api) as db:
        db.execute("CREATE TRIGGER fail BEFORE INSERT ON instances "
                   "BEGIN SELECT RAISE(ABORT, 'simulated index failure'); END")
    with pytest.raises(CatalogError):
        node_api.write(data)
    assert files_on_disk(node_api) == {}
    assert _empty_index(node_api)  # the transaction made no patient/study/series either
    with _sqlite(node_api) as db:
        db.execute("DROP TRIGGER fail")
    assert node_api.write(data).outcome is Outcome.STORED  # a retry succeeds


def test_lost_index_table_raises_and_leaves_no_object(node_api: Node) -> None:
    with _sqlite(node_api) as db:
        db.execute("DROP TABLE instances")
    with pytest.raises(CatalogError):
        node_api.write(study(per_series=1)[0])
    assert files_on_disk(node_api) == {}


def test_index_failure_on_a_conflict_leaves_the_first_copy_alone(node_api: Node) -> None:
    first = study(per_series=1)[0]
    node_api.write(first)
    before = files_on_disk(node_api)
    with _sqlite(node_api) as db:
        db.execute("CREATE TRIGGER fail BEFORE INSERT ON conflicts "
                   "BEGIN SELECT RAISE(ABORT, 'simulated index failure'); END")
    with pytest.raises(CatalogError):
        node_api.write(variant(first, SeriesDescription="OTHER"))
    assert files_on_disk(node_api) == before
    assert node_api.conflicts() == []


# -- tampering: an integrity error, never wrong bytes --------------------------------------------

@pytest.fixture
def small_chunks(settings_factory: Callable[..., Settings]) -> Iterator[Node]:
    """A node that writes 4 KiB chunks, so a 64x64 instance spans several of them."""
    node = Node.from_settings(settings_factory({"store": {"chunk_size": 4096}}),
                              create_keys=True)
    yield node
    node.close()


def _original_on_disk(node: Node, key: str) -> Path:
    return store_root(node) / key / ORIGINAL


def _refuses_to_read(node: Node, rec: object, out: Path) -> None:
    with pytest.raises(IntegrityError):
        node.read_original(rec)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        with node.open_object(f"{rec.object_key}/{ORIGINAL}") as fh:  # type: ignore[attr-defined]
            fh.read()
    with pytest.raises(IntegrityError):
        node.export(rec, out)  # type: ignore[arg-type]
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no partial file left
    assert node.verify_object(f"{rec.object_key}/{ORIGINAL}") is not None  # type: ignore[attr-defined]


def test_flipped_byte_anywhere_is_an_integrity_error(small_chunks: Node, tmp_path: Path) -> None:
    data = study(per_series=1)[0]
    small_chunks.write(data)
    [rec] = list(small_chunks.ls())
    path = _original_on_disk(small_chunks, rec.object_key)
    pristine = path.read_bytes()
    assert len(pristine) > 2 * 4096
    # Header fields (magic, version, key id, chunk size, salt), first/middle/last chunk, tags.
    for pos in (0, 4, 8, 11, 12, 15, 16, 31, 32, 100, 4096 + 32 + 8, len(pristine) // 2,
                len(pristine) - 17, len(pristine) - 1):
        path.write_bytes(pristine[:pos] + bytes([pristine[pos] ^ 0x01]) + pristine[pos + 1 :])
        _refuses_to_read(small_chunks, rec, tmp_path / f"out-{pos}")
    path.write_bytes(pristine)
    assert small_chunks.read_original(rec) == data


def test_truncated_or_extended_object_is_an_integrity_error(small_chunks: Node,
                                                            tmp_path: Path) -> None:
    data = study(per_series=1)[0]
    small_chunks.write(data)
    [rec] = list(small_chunks.ls())
    path = _original_on_disk(small_chunks, rec.object_key)
    pristine = path.read_bytes()
    sealed_chunk = 4096 + 16
    # Mid-header, header only, one whole chunk dropped from the end, a byte short, a byte more.
    whole_chunks = 32 + sealed_chunk * ((len(pristine) - 32) // sealed_chunk)
    for variant_bytes in (b"", pristine[:10], pristine[:32], pristine[:32 + sealed_chunk],
                          pristine[:whole_chunks], pristine[:-1], pristine + b"\x00"):
        path.write_bytes(variant_bytes)
        _refuses_to_read(small_chunks, rec, tmp_path / f"out-{len(variant_bytes)}")


def test_swapped_originals_are_integrity_errors(node_api: Node, tmp_path: Path) -> None:
    for data in study(per_series=2):
        node_api.write(data)
    a, b = list(node_api.ls())
    path_a, path_b = (_original_on_disk(node_api, r.object_key) for r in (a, b))
    blob_a, blob_b = path_a.read_bytes(), path_b.read_bytes()
    path_a.write_bytes(blob_b)
    path_b.write_bytes(blob_a)
    _refuses_to_read(node_api, a, tmp_path / "a")
    _refuses_to_read(node_api, b, tmp_path / "b")
    # A description moved over an original is refused the same way.
    path_a.write_bytes((store_root(node_api) / a.object_key / DESCRIPTION).read_bytes())
    with pytest.raises(IntegrityError):
        node_api.read_original(a)


def test_object_read_with_another_nodes_keys_is_an_integrity_error(
        settings_factory: Callable[..., Settings]) -> None:
    one = Node.from_settings(settings_factory(name="one"), create_keys=True)
    two = Node.from_settings(settings_factory(name="two"), create_keys=True)
    try:
        data = study(per_series=1)[0]
        one.write(data)
        [rec] = list(one.ls())
        blob = _original_on_disk(one, rec.object_key).read_bytes()
        with pytest.raises(IntegrityError):
            two.decrypt(blob, f"{rec.object_key}/{ORIGINAL}")
        assert one.decrypt(blob, f"{rec.object_key}/{ORIGINAL}") == data
    finally:
        one.close()
        two.close()


# -- reindex ---------------------------------------------------------------------------------

def test_reindex_from_descriptions_gives_back_the_same_listing(any_node: Node) -> None:
    instances = study(series=2, per_series=2)
    instances += study(per_series=1, seed=5, patient=synthetic.Patient(patient_id="PID-2"))
    for data in instances:
        any_node.write(data)
    any_node.core.ingest.accept(variant(instances[1], SeriesDescription="CHANGED"),
                                    Source(hospital="default", via="dimse", who="LATE"))
    any_node.core.ingest.accept(variant(instances[2], StudyDescription="CHANGED"),
                                    Source(hospital="other", via="dimse", who="X"))
    jpeg_ls = (PYDICOM_FILES / "JPEGLSNearLossless_08.dcm").read_bytes()
    any_node.write(jpeg_ls, hospital="st-marys")
    listing, conflicts = list(any_node.ls()), any_node.conflicts()
    counts = any_node.core.catalog.counts()
    assert len(listing) == 6 and len(conflicts) == 2

    any_node.core.catalog.clear()
    assert list(any_node.ls()) == []
    outcomes = [any_node.reindex_entry(key) for key in any_node.descriptions()]
    assert outcomes.count("instance") == 6 and outcomes.count("conflict") == 2
    assert list(any_node.ls()) == listing
    assert any_node.conflicts() == conflicts
    assert any_node.core.catalog.counts() == counts


def test_reindex_keeps_the_attributes_of_the_first_arrival(any_node: Node) -> None:
    # One Patient ID, two names (a real archive has such): the index keeps the first name
    # it was given. Arrival order is the reverse of path order here, so a reindex that
    # walked the paths would come back with the other name.
    later_path = synthetic.ct_study(synthetic.Patient("SHARED-ID", "Zed^First"), series=1,
                                    per_series=1, size=64, study_uid="1.2.826.0.1.9")[0]
    earlier_path = synthetic.ct_study(synthetic.Patient("SHARED-ID", "Ann^Second"), series=1,
                                      per_series=1, size=64, study_uid="1.2.826.0.1.1")[0]
    any_node.write(encode(later_path))
    any_node.write(encode(earlier_path))
    listing = list(any_node.ls())
    assert [r.patient_name for r in listing] == ["Zed^First", "Zed^First"]
    any_node.core.catalog.clear()
    for key in any_node.descriptions():
        any_node.reindex_entry(key)
    assert list(any_node.ls()) == listing
