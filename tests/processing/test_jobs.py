"""The job queue on SQLite and on a real PostgreSQL: queued with the instance, taken with a
lease, recorded once, retried, failed for good, taken back from dead workers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from node.index import Catalog, schema
from node.index.jobs import FAILED, QUEUED, RUNNING, JobQueue, worker_name
from node.index.records import State
from tests.index.test_catalog import catalog, catalog_url, db, record  # noqa: F401

LEASE = 60.0


def job_rows(db: sa.Engine) -> list[sa.Row]:  # noqa: F811
    with db.connect() as conn:
        return list(conn.execute(sa.select(schema.jobs).order_by(schema.jobs.c.pk)))


def test_an_indexed_instance_comes_with_its_job(catalog: Catalog, db: sa.Engine) -> None:  # noqa: F811
    catalog.add_instance(record(1))
    catalog.add_instance(record(2))  # the cached-series path
    catalog.add_instance(record(3, state=State.PROCESSED))  # reindexed, already done
    assert [(r.target, r.state) for r in job_rows(db)] == [
        ("1.2.1.1.1", QUEUED), ("1.2.1.1.2", QUEUED)]
    assert catalog.get_instance("1.2.1.1.1").state == State.QUEUED  # type: ignore[union-attr]


def test_a_refused_duplicate_adds_no_job(catalog: Catalog, db: sa.Engine) -> None:  # noqa: F811
    assert catalog.add_instance(record(1))
    assert not catalog.add_instance(record(1))
    assert len(job_rows(db)) == 1


def test_take_leases_oldest_first_and_finish_records_once(catalog: Catalog) -> None:  # noqa: F811
    for n in range(1, 6):
        catalog.add_instance(record(n))
    queue = JobQueue(catalog, "host:1")
    first = queue.take(3, LEASE, 3)
    assert [j.target for j in first] == ["1.2.1.1.1", "1.2.1.1.2", "1.2.1.1.3"]
    assert {j.attempts for j in first} == {1}
    assert [j.target for j in queue.take(10, LEASE, 3)] == ["1.2.1.1.4", "1.2.1.1.5"]
    assert queue.take(10, LEASE, 3) == []  # all leased
    assert queue.finish(first[0], State.PROCESSED, True, "r@1#x")
    assert not queue.finish(first[0], State.PROCESSED, True, "r@1#x")  # already recorded
    rec = catalog.get_instance("1.2.1.1.1")
    assert rec is not None and (rec.state, rec.blank, rec.recipe_id) == (
        State.PROCESSED, True, "r@1#x")
    counts = queue.counts()
    assert counts.queue_depth == 4 and counts.jobs == {RUNNING: 4}
    assert counts.instances == {State.PROCESSED: 1, State.QUEUED: 4} and counts.blank == 1


def test_an_expired_lease_is_taken_again_and_the_late_result_is_dropped(
        catalog: Catalog) -> None:  # noqa: F811
    catalog.add_instance(record(1))
    slow, fast = JobQueue(catalog, "host:1"), JobQueue(catalog, "host:2")
    [job] = slow.take(1, 0.0, 3)  # lease already over: its worker is as good as dead
    [again] = fast.take(1, LEASE, 3)
    assert again.target == job.target and again.attempts == 2
    assert not slow.finish(job, State.PROCESSED, False, "late")
    assert fast.finish(again, State.PROCESSED, False, "fresh")
    assert catalog.get_instance("1.2.1.1.1").recipe_id == "fresh"  # type: ignore[union-attr]


def test_requeue_while_running_supersedes_the_running_result(catalog: Catalog) -> None:  # noqa: F811
    catalog.add_instance(record(1))
    queue = JobQueue(catalog, "host:1")
    [job] = queue.take(1, LEASE, 3)
    assert queue.requeue(["1.2.1.1.1"], '{"size": 64}') == 1
    assert not queue.finish(job, State.PROCESSED, False, "old recipe")
    [again] = queue.take(1, LEASE, 3)
    assert again.params == '{"size": 64}' and again.attempts == 1


def test_errors_retry_later_then_fail_for_good(catalog: Catalog, db: sa.Engine) -> None:  # noqa: F811
    catalog.add_instance(record(1))
    queue = JobQueue(catalog, "host:1")
    for attempt in (1, 2):
        [job] = queue.take(1, LEASE, 3)
        assert job.attempts == attempt
        assert queue.fail(job, "StoreError: down", 3, retry_after=0.0) is False
        assert catalog.get_instance(job.target).state == State.QUEUED  # type: ignore[union-attr]
    [job] = queue.take(1, LEASE, 3)
    assert queue.fail(job, "StoreError: still down", 3) is True
    assert catalog.get_instance(job.target).state == State.FAILED  # type: ignore[union-attr]
    assert queue.take(1, LEASE, 3) == []
    assert queue.failures() == [("1.2.1.1.1", "StoreError: still down")]
    assert [r.state for r in job_rows(db)] == [FAILED]
    # reprocess gives it a clean slate
    queue.requeue(["1.2.1.1.1"])
    [job] = queue.take(1, LEASE, 3)
    assert job.attempts == 1


def test_a_retry_waits_before_it_is_due(catalog: Catalog) -> None:  # noqa: F811
    catalog.add_instance(record(1))
    queue = JobQueue(catalog, "host:1")
    [job] = queue.take(1, LEASE, 3)
    queue.fail(job, "OSError: busy", 3, retry_after=60.0)
    assert queue.take(1, LEASE, 3) == []


def test_a_job_whose_worker_dies_every_time_fails_for_good(catalog: Catalog) -> None:  # noqa: F811
    catalog.add_instance(record(1))
    queue = JobQueue(catalog, "host:1")
    for _ in range(3):
        assert len(queue.take(1, 0.0, 3)) == 1  # taken, then its worker "dies"
    assert queue.take(1, LEASE, 3) == []
    assert catalog.get_instance("1.2.1.1.1").state == State.FAILED  # type: ignore[union-attr]
    assert "stopped during every attempt" in queue.failures()[0][1]


def test_jobs_of_a_dead_worker_on_this_host_are_released_at_once(
        catalog: Catalog, db: sa.Engine) -> None:  # noqa: F811
    import subprocess
    import sys

    catalog.add_instance(record(1))
    catalog.add_instance(record(2))
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    here = worker_name().rsplit(":", 1)[0]  # this host and process-id namespace
    dead = f"{here}:{done.stdout.strip()}"
    JobQueue(catalog, dead).take(1, LEASE, 3)
    alive = JobQueue(catalog)  # this process: alive
    alive.take(1, LEASE, 3)
    assert alive.take(5, LEASE, 3) == []
    assert alive.release_dead() == 1
    [job] = alive.take(5, LEASE, 3)
    assert job.target == "1.2.1.1.1"


def test_a_worker_in_another_container_of_the_same_host_name_keeps_its_jobs(
        catalog: Catalog, db: sa.Engine) -> None:  # noqa: F811
    """Containers sharing a host name (host networking) do not share process ids: a process
    id that is not running here may be running there, so its lease is left to run out."""
    import socket
    import subprocess
    import sys

    catalog.add_instance(record(1))
    gone_here = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                               capture_output=True, text=True, check=True).stdout.strip()
    for elsewhere in (f"{socket.gethostname()}~ffffffff:{gone_here}",  # another namespace
                      f"{socket.gethostname()}:{gone_here}"):  # a worker of an older node
        JobQueue(catalog, elsewhere).take(1, LEASE, 3)
        assert JobQueue(catalog).release_dead() == 0
        assert JobQueue(catalog).take(5, LEASE, 3) == []  # still theirs
        catalog.remove_instance("1.2.1.1.1")
        catalog.add_instance(record(1))


def test_removing_an_instance_removes_its_job(catalog: Catalog, db: sa.Engine) -> None:  # noqa: F811
    catalog.add_instance(record(1))
    catalog.remove_instance("1.2.1.1.1")
    assert job_rows(db) == []


def test_concurrent_workers_never_take_the_same_job(catalog: Catalog) -> None:  # noqa: F811
    for n in range(1, 61):
        catalog.add_instance(record(n))
    taken: list[list[str]] = [[] for _ in range(4)]

    def work(i: int) -> None:
        queue = JobQueue(catalog, f"host:{100 + i}")
        while jobs := queue.take(3, LEASE, 3):
            for job in jobs:
                assert queue.finish(job, State.PROCESSED, False, "r")
                taken[i].append(job.target)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [uid for part in taken for uid in part]
    assert sorted(everything) == sorted(f"1.2.1.1.{n}" for n in range(1, 61))
    assert JobQueue(catalog).counts().instances == {State.PROCESSED: 60}


def test_an_index_from_before_processing_is_upgraded_and_queued(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    old = sa.MetaData()
    for table in (schema.patients, schema.studies, schema.series, schema.conflicts):
        table.to_metadata(old)
    instances = schema.instances.to_metadata(old)
    instances._columns.remove(instances.c.blank)  # type: ignore[attr-defined]
    instances._columns.remove(instances.c.recipe_id)  # type: ignore[attr-defined]
    old.create_all(engine)
    engine.dispose()
    with Catalog(url) as first:  # the first release's catalog wrote state "stored"
        with first.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE jobs"))
    legacy = sa.create_engine(url)
    with legacy.begin() as conn:
        conn.execute(sa.insert(schema.patients).values(pk=1, hospital="h", patient_key="p"))
        conn.execute(sa.insert(schema.studies).values(pk=1, patient_pk=1, study_uid="1.2",
                                                      number_of_series=1, number_of_instances=1))
        conn.execute(sa.insert(schema.series).values(pk=1, study_pk=1, series_uid="1.2.3",
                                                     number_of_instances=1))
        conn.execute(sa.text(
            "INSERT INTO instances (pk, series_pk, sop_uid, sop_class_uid, transfer_syntax_uid,"
            " object_key, sha256, size, calling_ae, received_at, state) VALUES (1, 1, '1.2.3.4',"
            " '1.2', '1.2.840.10008.1.2.1', 'h/p/1.2/1.2.3/1.2.3.4', 'ab', 1, '', :at,"
            " 'stored')"), {"at": datetime.now(UTC) - timedelta(days=1)})
    legacy.dispose()
    with Catalog(url) as upgraded:
        rec = upgraded.get_instance("1.2.3.4")
        assert rec is not None and rec.state == State.QUEUED and rec.blank is None
        [job] = JobQueue(upgraded).take(5, LEASE, 3)
        assert job.target == "1.2.3.4"
