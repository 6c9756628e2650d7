"""The catalog on SQLite and on a real PostgreSQL: every catalog test runs on both."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from node.errors import CatalogError
from node.index import Catalog, ConflictRecord, InstanceRecord, schema
from node.index import catalog as catalog_module

RECEIVED = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    with server.database() as url:
        yield url


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = Catalog(catalog_url)
    yield cat
    cat.close()


@pytest.fixture
def db(catalog_url: str, catalog: Catalog) -> Iterator[sa.Engine]:
    """A second engine on the catalog's database, to look at rows the API does not show."""
    engine = sa.create_engine(catalog_url)
    yield engine
    engine.dispose()


def record(n: int = 1, **overrides: object) -> InstanceRecord:
    """Returns an instance record of instance ``n`` with only the required fields."""
    values: dict[str, object] = {
        "hospital": "H1",
        "patient_key": "P1",
        "study_uid": "1.2.1",
        "series_uid": "1.2.1.1",
        "sop_uid": f"1.2.1.1.{n}",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "object_key": f"H1/P1/1.2.1/1.2.1.1/1.2.1.1.{n}",
        "sha256": f"{n:064x}",
        "size": 1000 + n,
        "calling_ae": "MODALITY",
        "received_at": RECEIVED,
    }
    values.update(overrides)
    return InstanceRecord(**values)  # type: ignore[arg-type]


def full_record() -> InstanceRecord:
    """Returns a record with every field set, the timestamp in a non-UTC zone."""
    return record(
        received_at=datetime(2025, 3, 4, 7, 6, 7, 123456, tzinfo=timezone(timedelta(hours=2))),
        patient_id="PID-1",
        issuer_of_patient_id="ISSUER",
        patient_name="Doe^Jane",
        patient_birth_date="19700101",
        patient_sex="F",
        study_date="20250301",
        study_time="101112.5",
        accession_number="ACC1",
        study_id="S1",
        study_description="CT Thorax",
        referring_physician_name="Who^Doctor",
        modality="CT",
        series_number=3,
        series_description="Axial",
        series_date="20250301",
        series_time="101500",
        body_part_examined="CHEST",
        images_in_acquisition=40,
        instance_number=7,
        number_of_frames=2,
        rows=512,
        columns=256,
        state="processed",
        blank=True,
        recipe_id="default@1#0123456789ab",
        labels="import",
        size=2**40,  # beyond 32 bits
    )


def study_row(db: sa.Engine, study_uid: str) -> sa.Row | None:
    with db.connect() as conn:
        return conn.execute(
            sa.select(schema.studies).where(schema.studies.c.study_uid == study_uid)
        ).first()


def series_row(db: sa.Engine, series_uid: str) -> sa.Row | None:
    with db.connect() as conn:
        return conn.execute(
            sa.select(schema.series).where(schema.series.c.series_uid == series_uid)
        ).first()


# ---- add and get ------------------------------------------------------------------------


def test_roundtrip_of_every_field(catalog: Catalog) -> None:
    rec = full_record()
    # Guards new record fields: this test must set them, so the catalog must store them.
    unset = [f.name for f in dataclasses.fields(rec) if getattr(rec, f.name) is None]
    assert unset == []

    assert catalog.add_instance(rec) is True
    got = catalog.get_instance(rec.sop_uid)

    assert got == dataclasses.replace(rec, received_at=rec.received_at.astimezone(UTC))
    assert got is not None and got.received_at.tzinfo == UTC
    assert got.received_at == datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def test_get_of_unknown_instance_is_none(catalog: Catalog) -> None:
    assert catalog.get_instance("9.9.9") is None


def test_naive_timestamp_is_refused(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="received_at"):
        catalog.add_instance(record(received_at=datetime(2025, 1, 1)))


def test_duplicate_add_returns_false_and_changes_nothing(catalog: Catalog) -> None:
    rec = record(patient_name="Doe^Jane", modality="CT")
    assert catalog.add_instance(rec) is True
    before = catalog.counts()

    same = catalog.add_instance(rec)
    # Same SOP UID elsewhere in the hierarchy, with other values: still nothing changes.
    other = catalog.add_instance(
        record(
            hospital="H2",
            patient_key="P9",
            study_uid="7.7",
            series_uid="7.7.7",
            object_key="elsewhere",
            patient_name="Other^Name",
            modality="MR",
        )
    )

    assert (same, other) == (False, False)
    assert catalog.counts() == before
    assert catalog.get_instance(rec.sop_uid) == rec


def test_later_instances_fill_nulls_but_keep_values(catalog: Catalog, db: sa.Engine) -> None:
    catalog.add_instance(record(1, study_description="First", series_description=None))
    catalog.add_instance(
        record(
            2,
            patient_name="Doe^Jane",
            study_description="Second",
            accession_number="ACC",
            series_description="Axial",
            modality="CT",
        )
    )

    first = catalog.get_instance("1.2.1.1.1")
    assert first is not None
    assert first.patient_name == "Doe^Jane"
    assert first.study_description == "First"
    assert first.accession_number == "ACC"
    assert first.series_description == "Axial"
    assert first.modality == "CT"
    study = study_row(db, "1.2.1")
    assert study is not None and study.modalities_in_study == "CT"


def test_counts_and_modalities_in_study(catalog: Catalog, db: sa.Engine) -> None:
    layout = [  # (study, series, modality, number of instances)
        ("1.1", "1.1.1", "CT", 2),
        ("1.1", "1.1.2", "PR", 1),
        ("1.1", "1.1.3", "CT", 3),
        ("1.1", "1.1.4", None, 1),
        ("2.1", "2.1.1", "MR", 2),
    ]
    n = 0
    for study_uid, series_uid, modality, count in layout:
        for _ in range(count):
            n += 1
            catalog.add_instance(
                record(n, study_uid=study_uid, series_uid=series_uid, modality=modality)
            )

    assert catalog.counts() == {
        "patients": 1,
        "studies": 2,
        "series": 5,
        "instances": 9,
        "conflicts": 0,
    }
    first, second = study_row(db, "1.1"), study_row(db, "2.1")
    assert first is not None and second is not None
    assert (first.number_of_series, first.number_of_instances) == (4, 7)
    assert first.modalities_in_study == "CT\\PR"
    assert (second.number_of_series, second.number_of_instances) == (1, 2)
    assert second.modalities_in_study == "MR"
    ct = series_row(db, "1.1.3")
    assert ct is not None and ct.number_of_instances == 3


# ---- hierarchical listing ---------------------------------------------------------------


def _hierarchy(catalog: Catalog) -> list[str]:
    """Adds a small tree in scrambled order; returns its SOP UIDs in the expected order."""
    # (hospital, patient, study, study date, series, series number, sop, instance number)
    rows = [
        ("H1", "PA", "1.1", "20240101", "1.1.1", 1, "1.1.1.2", 2),
        ("H1", "PA", "1.1", "20240101", "1.1.1", 1, "1.1.1.1", 1),
        ("H1", "PA", "1.1", "20240101", "1.1.1", 1, "1.1.1.0", None),  # no number: last
        ("H1", "PA", "1.1", "20240101", "1.1.2", None, "1.1.2.1", 1),  # no number: last
        ("H1", "PA", "1.1", "20240101", "1.1.3", 2, "1.1.3.1", 1),
        ("H1", "PA", "1.0", None, "1.0.1", 1, "1.0.1.1", 1),  # no date: last
        ("H1", "PA", "1.2", "20230101", "1.2.1", 1, "1.2.1.1", 1),
        ("H1", "PB", "2.1", "20200101", "2.1.1", 1, "2.1.1.1", 1),
        ("H0", "PZ", "3.1", "20990101", "3.1.1", 1, "3.1.1.1", 1),
    ]
    for i, (hospital, patient, study, date, series, snum, sop, inum) in enumerate(rows):
        catalog.add_instance(
            record(
                i,
                hospital=hospital,
                patient_key=patient,
                study_uid=study,
                study_date=date,
                series_uid=series,
                series_number=snum,
                sop_uid=sop,
                instance_number=inum,
            )
        )
    return [
        "3.1.1.1",  # H0 first
        "1.2.1.1",  # H1/PA: 2023 study before 2024 study before the undated one
        "1.1.1.1",
        "1.1.1.2",
        "1.1.1.0",
        "1.1.3.1",
        "1.1.2.1",
        "1.0.1.1",
        "2.1.1.1",  # H1/PB
    ]


def _sops(records: Iterator[InstanceRecord]) -> list[str]:
    return [r.sop_uid for r in records]


def test_instances_lists_everything_in_hierarchical_order(catalog: Catalog) -> None:
    expected = _hierarchy(catalog)
    assert _sops(catalog.instances()) == expected


def test_instances_with_trailing_parts_omitted(catalog: Catalog) -> None:
    expected = _hierarchy(catalog)
    h1 = expected[1:]
    assert _sops(catalog.instances("H1")) == h1
    assert _sops(catalog.instances("H1", "PA")) == h1[:-1]
    assert _sops(catalog.instances("H1", "PA", "1.1")) == [
        "1.1.1.1",
        "1.1.1.2",
        "1.1.1.0",
        "1.1.3.1",
        "1.1.2.1",
    ]
    assert _sops(catalog.instances("H1", "PA", "1.1", "1.1.1")) == [
        "1.1.1.1",
        "1.1.1.2",
        "1.1.1.0",
    ]
    assert _sops(catalog.instances("H1", "PA", "1.1", "1.1.1", "1.1.1.2")) == ["1.1.1.2"]
    assert _sops(catalog.instances("H1", "PB", "1.1")) == []  # study of another patient
    assert _sops(catalog.instances("H9")) == []


def test_instances_streams_in_batches(catalog: Catalog, monkeypatch) -> None:
    monkeypatch.setattr(catalog_module, "_YIELD_PER", 3)
    for n in range(10):
        catalog.add_instance(record(n, instance_number=n))

    stream = catalog.instances("H1")
    first = next(stream)
    # An open stream must not block writers.
    assert catalog.add_instance(record(99, instance_number=99)) is True
    rest = list(stream)

    assert [first.instance_number, *(r.instance_number for r in rest)][:10] == list(range(10))


# ---- lookups ----------------------------------------------------------------------------


def test_patient_keys_for_id_and_hospitals(catalog: Catalog) -> None:
    catalog.add_instance(record(1, hospital="H1", patient_key="K2", patient_id="ID"))
    catalog.add_instance(
        record(2, hospital="H1", patient_key="K1", study_uid="2", series_uid="2.1", patient_id="ID")
    )
    catalog.add_instance(
        record(3, hospital="H2", patient_key="K3", study_uid="3", series_uid="3.1", patient_id="ID")
    )
    catalog.add_instance(
        record(4, hospital="H2", patient_key="K4", study_uid="4", series_uid="4.1", patient_id="X")
    )

    assert catalog.patient_keys_for_id("H1", "ID") == ["K1", "K2"]
    assert catalog.patient_keys_for_id("H2", "ID") == ["K3"]
    assert catalog.patient_keys_for_id(None, "ID") == ["K1", "K2", "K3"]
    assert catalog.patient_keys_for_id("H1", "X") == []
    assert catalog.hospitals() == ["H1", "H2"]


# ---- conflicts --------------------------------------------------------------------------


def test_conflicts(catalog: Catalog) -> None:
    later = RECEIVED + timedelta(minutes=1)
    first = ConflictRecord("1.2.3", "a" * 64, 10, "conflicts/1.2.3/a", "AE1", later)
    new_york = timezone(timedelta(hours=-5))  # stored and returned as UTC
    second = ConflictRecord(
        "1.2.3", "b" * 64, 11, "conflicts/1.2.3/b", "AE2", RECEIVED.astimezone(new_york)
    )
    elsewhere = ConflictRecord("4.5.6", "a" * 64, 12, "conflicts/4.5.6/a", "AE1", later)

    assert catalog.add_conflict(first) is True
    assert catalog.add_conflict(first) is False
    assert catalog.add_conflict(dataclasses.replace(first, object_key="other")) is False
    assert catalog.add_conflict(second) is True
    assert catalog.add_conflict(elsewhere) is True

    assert catalog.conflicts("1.2.3") == [second, first]  # oldest first
    assert catalog.conflicts() == [second, first, elsewhere]
    assert catalog.conflicts("9.9") == []
    assert all(c.received_at.tzinfo == UTC for c in catalog.conflicts())
    assert catalog.counts()["conflicts"] == 3


# ---- removal and clearing ---------------------------------------------------------------


def test_remove_instance_fixes_counts_and_prunes(catalog: Catalog, db: sa.Engine) -> None:
    catalog.add_instance(record(1, series_uid="S1", modality="CT"))
    catalog.add_instance(record(2, series_uid="S1", modality="CT"))
    catalog.add_instance(record(3, series_uid="S2", modality="PR"))
    catalog.add_instance(record(4, study_uid="T2", series_uid="S3", modality="MR"))

    assert catalog.remove_instance("1.2.1.1.1") is True
    study = study_row(db, "1.2.1")
    assert study is not None
    assert (study.number_of_series, study.number_of_instances) == (2, 2)
    s1 = series_row(db, "S1")
    assert s1 is not None and s1.number_of_instances == 1

    assert catalog.remove_instance("1.2.1.1.3") is True  # last of S2: series pruned
    assert series_row(db, "S2") is None
    study = study_row(db, "1.2.1")
    assert study is not None
    assert (study.number_of_series, study.number_of_instances) == (1, 1)
    assert study.modalities_in_study == "CT"

    assert catalog.remove_instance("1.2.1.1.2") is True  # last of the study: pruned
    assert study_row(db, "1.2.1") is None
    assert catalog.counts()["patients"] == 1  # still has study T2

    assert catalog.remove_instance("1.2.1.1.4") is True  # last of the patient
    assert catalog.counts() == dict.fromkeys(
        ("patients", "studies", "series", "instances", "conflicts"), 0
    )
    assert catalog.remove_instance("1.2.1.1.4") is False
    assert catalog.get_instance("1.2.1.1.4") is None


def test_removed_instance_can_be_added_again(catalog: Catalog, db: sa.Engine) -> None:
    rec = record(1, modality="CT")
    catalog.add_instance(rec)
    catalog.remove_instance(rec.sop_uid)
    assert catalog.add_instance(rec) is True
    study = study_row(db, rec.study_uid)
    assert study is not None
    assert (study.number_of_series, study.number_of_instances) == (1, 1)


def test_clear(catalog: Catalog) -> None:
    _hierarchy(catalog)
    catalog.add_conflict(ConflictRecord("1", "a" * 64, 1, "k", "AE", RECEIVED))

    catalog.clear()

    assert set(catalog.counts().values()) == {0}
    assert list(catalog.instances()) == []
    assert catalog.add_instance(record(1)) is True  # still usable


# ---- concurrency ------------------------------------------------------------------------


def _run_threads(count: int, work) -> list[object]:
    """Runs ``work(i)`` in ``count`` threads started together; returns results or errors."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # reported by the assertion in the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def _concurrent_record(n: int) -> InstanceRecord:
    study = f"9.{n % 2}"  # two new studies, two series each, interleaved by every thread
    series = f"{study}.{n % 4 // 2}"
    return record(
        n,
        study_uid=study,
        series_uid=series,
        modality="CT" if n % 4 < 2 else "SEG",
        patient_name="Doe^Jane" if n % 3 else None,
    )


def test_concurrent_adds_into_the_same_new_studies(catalog: Catalog, db: sa.Engine) -> None:
    def work(i: int) -> list[bool]:
        return [catalog.add_instance(_concurrent_record(n)) for n in range(i, 200, 4)]

    results = _run_threads(4, work)

    assert results == [[True] * 50] * 4
    assert catalog.counts() == {
        "patients": 1,
        "studies": 2,
        "series": 4,
        "instances": 200,
        "conflicts": 0,
    }
    for study_uid in ("9.0", "9.1"):
        study = study_row(db, study_uid)
        assert study is not None
        assert (study.number_of_series, study.number_of_instances) == (2, 100)
        assert study.modalities_in_study == "CT\\SEG"
    for series_uid in ("9.0.0", "9.0.1", "9.1.0", "9.1.1"):
        row = series_row(db, series_uid)
        assert row is not None and row.number_of_instances == 50


def test_concurrent_adds_of_the_same_instances(catalog: Catalog, db: sa.Engine) -> None:
    def work(_: int) -> list[bool]:
        return [catalog.add_instance(_concurrent_record(n)) for n in range(40)]

    results = _run_threads(4, work)

    assert not [r for r in results if isinstance(r, Exception)]
    inserted = [sum(flags) for flags in zip(*results, strict=True)]  # type: ignore[call-overload]
    assert inserted == [1] * 40  # each instance inserted by exactly one thread
    assert catalog.counts()["instances"] == 40
    study = study_row(db, "9.0")
    assert study is not None and study.number_of_instances == 20


def test_concurrent_adds_and_removes_keep_counts_consistent(
    catalog: Catalog, db: sa.Engine
) -> None:
    # Few instances, each its own series, so that series, studies and patients are
    # created and pruned again and again while others add to them.
    def churn(i: int) -> None:
        for step in range(120):
            n = (i * 7 + step * 5) % 12
            if step % 3 == 2:
                catalog.remove_instance(f"1.2.1.1.{n}")
            else:
                catalog.add_instance(
                    record(
                        n,
                        patient_key=f"P{n % 2}",
                        study_uid=f"8.{n % 4}",
                        series_uid=f"8.{n % 4}.{n}",
                        modality=("CT", "MR", "PR")[n % 3],
                    )
                )

    results = _run_threads(4, churn)

    assert results == [None] * 4
    with db.connect() as conn:
        rows = conn.execute(sa.select(schema.instances.c.series_pk)).scalars().all()
        series = conn.execute(sa.select(schema.series)).all()
        studies = conn.execute(sa.select(schema.studies)).all()
        patients = conn.execute(sa.select(schema.patients.c.pk)).scalars().all()
    for row in series:
        assert row.number_of_instances == rows.count(row.pk) > 0
    for study in studies:
        own = [row for row in series if row.study_pk == study.pk]
        assert study.number_of_series == len(own) > 0
        assert study.number_of_instances == sum(row.number_of_instances for row in own)
        assert study.modalities_in_study == "\\".join(sorted({row.modality for row in own}))
    assert sorted(patients) == sorted({study.patient_pk for study in studies})


# ---- failures ---------------------------------------------------------------------------


def test_database_failure_is_a_catalog_error_without_phi(catalog: Catalog) -> None:
    bad = record(object_key=None, patient_name="Secret^Patient", patient_id="PID-SECRET")

    with pytest.raises(CatalogError) as info:
        catalog.add_instance(bad)

    assert bad.sop_uid in str(info.value)
    assert "Secret" not in str(info.value)
    assert "SECRET" not in str(info.value)
    assert catalog.counts()["patients"] == 0  # rolled back whole


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_postgresql_is_a_catalog_error() -> None:
    url = f"postgresql://user:hunter2@127.0.0.1:{_closed_port()}/index?connect_timeout=2"

    with pytest.raises(CatalogError) as info:
        Catalog(url)

    assert "hunter2" not in str(info.value)


def test_sqlite_in_a_path_that_is_not_a_directory_is_a_catalog_error(tmp_path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")

    with pytest.raises(CatalogError):
        Catalog(f"sqlite:///{not_a_dir / 'index.db'}")


@contextmanager
def _read_only_directory(path: Path) -> Iterator[None]:
    """Makes ``path`` unwritable for this process: by its mode, or, since root ignores
    modes, by the immutable attribute (skips where that is not allowed)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], check=False).returncode:
        pytest.skip("running as root and cannot make a directory immutable (chattr +i)")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_sqlite_in_a_read_only_directory_is_a_catalog_error(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()

    with _read_only_directory(read_only), pytest.raises(CatalogError):
        Catalog(f"sqlite:///{read_only / 'index.db'}")


def test_unsupported_url_is_a_catalog_error() -> None:
    with pytest.raises(CatalogError, match="unsupported"):
        Catalog("mysql://u:p@localhost/db")


# ---- URLs and engine settings -----------------------------------------------------------


def test_postgresql_url_gets_psycopg_and_masks_the_password(postgres_server) -> None:
    with postgres_server.database() as url:
        plain = url.replace("postgresql+psycopg://postgres@", "postgresql://postgres:hunter2@")
        cat = Catalog(plain)  # trust authentication ignores the password
        try:
            assert cat.url.startswith("postgresql+psycopg://postgres:***@")
            assert "hunter2" not in repr(cat)
            assert cat.add_instance(record()) is True
        finally:
            cat.close()


def test_sqlite_pragmas(tmp_path) -> None:
    cat = Catalog(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        with cat._engine.connect() as conn:  # noqa: SLF001 - checking the connection set-up
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
    finally:
        cat.close()
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 2,  # FULL
        "foreign_keys": 1,
        "busy_timeout": 30000,
    }
