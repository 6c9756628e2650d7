"""C-FIND query-engine latency with 100,000 instances in the index, SQLite and PostgreSQL.

``.venv/bin/python bench/query_bench.py`` fills a fresh index (1,000 patients, 2,000 studies,
10,000 series, 100,000 instances) by bulk inserts straight into the tables (executemany,
not ``Catalog.add_instance``, which would take minutes), then times queries through
:mod:`node.index.query` (parse, SQL, every response Dataset built) and prints median and p95
in ms. PostgreSQL is a throwaway server started like the tests' (skipped when not installed);
``--postgres-url`` uses an existing, empty database instead. Target: study-level < 50 ms p95.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.index import Catalog, schema  # noqa: E402
from node.index.query import Model, identifier, parse_identifier, run  # noqa: E402

PATIENTS, STUDIES_PER_PATIENT, SERIES_PER_STUDY, INSTANCES_PER_SERIES = 1000, 2, 5, 10
MODALITIES = ("CT", "MR", "PR", "SEG", "US")
RECEIVED = datetime(2025, 1, 1, tzinfo=UTC)
CHUNK = 10_000


def fill(engine: Engine) -> int:
    """Bulk-inserts the synthetic hierarchy; returns the number of instances."""
    patients, studies, series, instances = [], [], [], []
    study_pk = series_pk = instance_pk = 0
    for p in range(1, PATIENTS + 1):
        patients.append(
            {
                "pk": p,
                "hospital": "default",
                "patient_key": f"K{p:05d}",
                "patient_id": f"PID{p:05d}",
                "patient_name": f"NAME{p:04d}^Given{p % 7}",
                "birth_date": f"19{50 + p % 50:02d}0101",
                "sex": "FM"[p % 2],
            }
        )
        for _ in range(STUDIES_PER_PATIENT):
            study_pk += 1
            month, day = 1 + study_pk % 24 % 12, 1 + study_pk % 28
            year = 2023 + study_pk % 24 // 12
            mods = sorted({MODALITIES[(study_pk + j) % 5] for j in range(SERIES_PER_STUDY)})
            studies.append(
                {
                    "pk": study_pk,
                    "patient_pk": p,
                    "study_uid": f"1.2.826.0.1.{study_pk}",
                    "study_date": f"{year}{month:02d}{day:02d}",
                    "study_time": f"{study_pk % 24:02d}{study_pk % 60:02d}00",
                    "accession_number": f"ACC{study_pk:06d}",
                    "study_id": str(study_pk),
                    "description": f"Study {study_pk}",
                    "referring_physician_name": "Who^Doctor",
                    "number_of_series": SERIES_PER_STUDY,
                    "number_of_instances": SERIES_PER_STUDY * INSTANCES_PER_SERIES,
                    "modalities_in_study": "\\".join(mods),
                }
            )
            for j in range(SERIES_PER_STUDY):
                series_pk += 1
                series_uid = f"1.2.826.0.1.{study_pk}.{j + 1}"
                series.append(
                    {
                        "pk": series_pk,
                        "study_pk": study_pk,
                        "series_uid": series_uid,
                        "modality": MODALITIES[(study_pk + j) % 5],
                        "series_number": j + 1,
                        "description": f"Series {j + 1}",
                        "number_of_instances": INSTANCES_PER_SERIES,
                    }
                )
                for k in range(INSTANCES_PER_SERIES):
                    instance_pk += 1
                    sop = f"{series_uid}.{k + 1}"
                    instances.append(
                        {
                            "pk": instance_pk,
                            "series_pk": series_pk,
                            "sop_uid": sop,
                            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                            "instance_number": k + 1,
                            "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                            "rows": 512,
                            "columns": 512,
                            "object_key": f"default/K{p:05d}/{sop}",
                            "sha256": f"{instance_pk:064x}",
                            "size": 500_000,
                            "calling_ae": "BENCH",
                            "received_at": RECEIVED,
                            "state": "stored",
                        }
                    )
    with engine.begin() as conn:
        for table, rows in (
            (schema.patients, patients),
            (schema.studies, studies),
            (schema.series, series),
            (schema.instances, instances),
        ):
            for i in range(0, len(rows), CHUNK):
                conn.execute(insert(table), rows[i : i + CHUNK])
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return len(instances)


# (name, model, identifier keys); return keys as a workstation's study browser asks.
QUERIES: list[tuple[str, Model, str, dict[str, Any]]] = [
    (
        "study: PatientName=NAME012* (PN, case-insensitive)",
        Model.STUDY_ROOT,
        "STUDY",
        {"PatientName": "NAME012*"},
    ),
    (
        "study: StudyDate one month",
        Model.STUDY_ROOT,
        "STUDY",
        {"StudyDate": "20240301-20240331"},
    ),
    (
        "study: AccessionNumber single value",
        Model.STUDY_ROOT,
        "STUDY",
        {"AccessionNumber": "ACC001234"},
    ),
    (
        "study: ModalitiesInStudy=SEG, month",
        Model.STUDY_ROOT,
        "STUDY",
        {"ModalitiesInStudy": "SEG", "StudyDate": "20240301-20240331"},
    ),
    ("study: universal (every study)", Model.STUDY_ROOT, "STUDY", {}),
    (
        "image: one series (10 instances)",
        Model.STUDY_ROOT,
        "IMAGE",
        {"StudyInstanceUID": "1.2.826.0.1.1234", "SeriesInstanceUID": "1.2.826.0.1.1234.3"},
    ),
]
STUDY_RETURN_KEYS = {
    "PatientName": "",
    "PatientID": "",
    "PatientBirthDate": "",
    "StudyInstanceUID": "",
    "StudyDate": "",
    "StudyTime": "",
    "AccessionNumber": "",
    "StudyDescription": "",
    "ModalitiesInStudy": "",
    "NumberOfStudyRelatedSeries": None,
    "NumberOfStudyRelatedInstances": None,
}
IMAGE_RETURN_KEYS = {"SOPInstanceUID": "", "SOPClassUID": "", "InstanceNumber": None}


def time_query(engine: Engine, model: Model, level: str, keys: dict[str, Any],
               reps: int) -> tuple[float, float, int]:
    """Returns (median ms, p95 ms, number of responses) over ``reps`` runs after a warm-up."""
    base = STUDY_RETURN_KEYS if level == "STUDY" else IMAGE_RETURN_KEYS
    ds = identifier(level, **{**base, **keys})
    count = len(list(run(engine, parse_identifier(ds, model))))
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        got = list(run(engine, parse_identifier(ds, model)))
        samples.append((time.perf_counter() - start) * 1000)
        assert len(got) == count
    samples.sort()
    p95 = samples[min(len(samples) - 1, int(round(0.95 * len(samples))) - 1)]
    return statistics.median(samples), p95, count


def bench(url: str, reps: int) -> None:
    cat = Catalog(url)  # creates the tables
    try:
        engine = cat._engine  # until Catalog grows a public accessor
        start = time.perf_counter()
        n = fill(engine)
        print(f"\n{engine.dialect.name}: {n:,} instances inserted in "
              f"{time.perf_counter() - start:.1f} s")
        print(f"  {'query':<48} {'matches':>8} {'median ms':>10} {'p95 ms':>8}")
        for name, model, level, keys in QUERIES:
            median, p95, count = time_query(engine, model, level, keys, reps)
            print(f"  {name:<48} {count:>8} {median:>10.2f} {p95:>8.2f}")
    finally:
        cat.close()


@contextmanager
def postgres() -> Iterator[str | None]:
    """Yields the URL of a database on a throwaway server (started as the tests start
    theirs, with the helpers of tests/fixtures/postgres.py), or None without PostgreSQL."""
    from tests.fixtures import postgres as pg

    bin_dir = pg._find_bin_dir()
    if bin_dir is None:
        yield None
        return
    base = pg._make_base_dir()
    data, log, port = base / "data", base / "log", pg._free_port()
    pg_ctl = str(bin_dir / "pg_ctl")
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
    pg._run(initdb, "initdb")
    options = f"-k {base} -h 127.0.0.1 -p {port} -c fsync=off"
    pg._run([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"],
            "pg_ctl start", log)
    try:
        server = pg.PostgresServer(host="127.0.0.1", port=port)
        with server.database() as url:
            yield url
    finally:
        stop = pg._as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"])
        subprocess.run(stop, check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--postgres-url", help="an existing, empty database to use")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bench(f"sqlite:///{tmp}/index.db", args.reps)
    if args.no_postgres:
        return 0
    if args.postgres_url:
        bench(args.postgres_url, args.reps)
        return 0
    with postgres() as url:
        if url is None:
            print("\npostgresql: skipped (initdb/pg_ctl not found)")
        else:
            bench(url, args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
