"""C-FIND query-engine latency with 100,000 instances in the index, SQLite and PostgreSQL.

``.venv/bin/python bench/query_bench.py`` fills a fresh index (1,000 patients, 2,000 studies,
10,000 series, 100,000 instances) by bulk inserts straight into the tables (executemany,
not ``Catalog.add_instance``, which would take minutes), then times queries through
:mod:`node.index.query` (parse, SQL, every response Dataset built) and prints median and p95
in ms. Then it starts the node's DIMSE server in this process on 127.0.0.1 (a port the OS
picks) over the same index and times pynetdicom C-FIND requests end to end (one association,
many requests, every pending response received): the rows marked ``C-FIND``. PostgreSQL is a
throwaway server started like the tests' (skipped when not installed); ``--postgres-url``
uses an existing, empty database instead. Target: study-level C-FIND < 50 ms p95, judged on
the ``C-FIND`` rows; ``--quick`` is a smoke run (fewer repetitions).
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

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import Engine, insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node import settings as node_settings  # noqa: E402
from node import wiring  # noqa: E402
from node.api import Node  # noqa: E402
from node.dimse.identifier import find as run  # noqa: E402
from node.dimse.identifier import identifier, parse_identifier  # noqa: E402
from node.index import Catalog, schema  # noqa: E402
from node.index.query import Model  # noqa: E402

PATIENTS, STUDIES_PER_PATIENT, SERIES_PER_STUDY, INSTANCES_PER_SERIES = 1000, 2, 5, 10
MODALITIES = ("CT", "MR", "PR", "SEG", "US")
RECEIVED = datetime(2025, 1, 1, tzinfo=UTC)
CHUNK = 10_000
TARGET_P95_MS = 50.0


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


def request(level: str, keys: dict[str, Any]) -> Dataset:
    base = STUDY_RETURN_KEYS if level == "STUDY" else IMAGE_RETURN_KEYS
    return identifier(level, **{**base, **keys})


def summary(samples: list[float]) -> tuple[float, float]:
    """(median, p95) of ``samples`` (nearest rank)."""
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(round(0.95 * len(samples))) - 1)]
    return statistics.median(samples), p95


def time_query(engine: Engine, model: Model, level: str, keys: dict[str, Any],
               reps: int) -> tuple[float, float, int]:
    """Returns (median ms, p95 ms, number of responses) over ``reps`` runs after a warm-up."""
    ds = request(level, keys)
    count = len(list(run(engine, parse_identifier(ds, model))))
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        got = list(run(engine, parse_identifier(ds, model)))
        samples.append((time.perf_counter() - start) * 1000)
        assert len(got) == count
    return (*summary(samples), count)


# Through the DIMSE server: the workstation-like queries (not the universal one).
DIMSE_QUERIES = [q for q in QUERIES if q[0].startswith(("study: P", "study: S", "study: A",
                                                        "image:"))]


def time_c_find(assoc: Any, level: str, keys: dict[str, Any], reps: int
                ) -> tuple[float, float, int]:
    """(median ms, p95 ms, matches) of C-FIND requests on one open association, each timed
    from sending the request to receiving the final response; after one warm-up."""
    ds = request(level, keys)

    def once() -> int:
        matches = 0
        for status, found in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
            code = getattr(status, "Status", None)
            if code is None:
                raise RuntimeError("C-FIND: no response (association aborted?)")
            if code in (0xFF00, 0xFF01):
                matches += found is not None
            elif code != 0x0000:
                raise RuntimeError(f"C-FIND failed: status 0x{code:04X}")
        return matches

    count = once()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        got = once()
        samples.append((time.perf_counter() - start) * 1000)
        assert got == count, (got, count)
    return (*summary(samples), count)


def bench_dimse(url: str, reps: int) -> list[tuple[str, int, float, float]]:
    """C-FIND through the node's DIMSE server, in this process, over the index at ``url``."""
    rows: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="qbench-home-") as home:
        settings = node_settings.load(home=home, environ={"SUPPORT_NODE_INDEX_URL": url,
                                                          "SUPPORT_NODE_DIMSE_PORT": "0"})
        node = Node.from_settings(settings, create_keys=True)
        scp = wiring.start_dimse(node.core)
        try:
            ae = AE(ae_title="QBENCH")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            assoc = ae.associate("127.0.0.1", scp.server_address[1],
                                 ae_title=settings.dimse.ae_title)
            if not assoc.is_established:
                raise RuntimeError("C-FIND bench: association with the node refused")
            try:
                for name, _model, level, keys in DIMSE_QUERIES:
                    median, p95, count = time_c_find(assoc, level, keys, reps)
                    rows.append((name, count, median, p95))
            finally:
                assoc.release()
        finally:
            scp.shutdown()
            scp.server_close()
            node.close()
    return rows


def verdict(name: str, p95: float) -> str:
    return ("PASS" if p95 < TARGET_P95_MS else "MISS") if name.startswith("study") else "info"


def bench(url: str, reps: int) -> bool:
    """Prints the engine and C-FIND rows; returns whether every study-level C-FIND met the
    target."""
    cat = Catalog(url)  # creates the tables
    try:
        engine = cat._engine  # until Catalog grows a public accessor
        start = time.perf_counter()
        n = fill(engine)
        print(f"\n{engine.dialect.name}: {n:,} instances inserted in "
              f"{time.perf_counter() - start:.1f} s; {reps} requests per row")
        print(f"  {'path':<7} {'query':<48} {'matches':>8} {'median ms':>10} {'p95 ms':>8}"
              f"  target (study p95 < {TARGET_P95_MS:.0f} ms)")
        for name, model, level, keys in QUERIES:
            median, p95, count = time_query(engine, model, level, keys, reps)
            print(f"  {'engine':<7} {name:<48} {count:>8} {median:>10.2f} {p95:>8.2f}")
        ok = True
        for name, count, median, p95 in bench_dimse(url, reps):
            mark = verdict(name, p95)
            ok &= mark != "MISS"
            print(f"  {'C-FIND':<7} {name:<48} {count:>8} {median:>10.2f} {p95:>8.2f}  {mark}",
                  flush=True)
        return ok
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
    parser.add_argument("--quick", action="store_true", help="20 requests per row")
    parser.add_argument("--postgres-url", help="an existing, empty database to use")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    reps = 20 if args.quick else args.reps
    with tempfile.TemporaryDirectory() as tmp:
        ok = bench(f"sqlite:///{tmp}/index.db", reps)
    if args.no_postgres:
        pass
    elif args.postgres_url:
        ok &= bench(args.postgres_url, reps)
    else:
        with postgres() as url:
            if url is None:
                print("\npostgresql: skipped (initdb/pg_ctl not found)")
            else:
                ok &= bench(url, reps)
    print(f"\nstudy-level C-FIND p95 < {TARGET_P95_MS:.0f} ms: {'PASS' if ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
