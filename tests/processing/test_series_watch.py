"""A series is complete after a quiet time or at its expected count; each completion queues
exactly one segmentation job, however many watchers, and the state survives a restart."""

from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa

from node.index import Catalog, schema
from node.index.series_watch import SEGMENT, complete_series, mark_all_complete
from tests.index.test_catalog import RECEIVED, catalog, catalog_url, record  # noqa: F401

QUIET = 60.0


def segment_jobs(catalog: Catalog) -> list[tuple[str, str]]:  # noqa: F811
    stmt = sa.select(schema.jobs.c.target, schema.jobs.c.params).where(
        schema.jobs.c.kind == SEGMENT).order_by(schema.jobs.c.pk)
    return catalog.reading("t", lambda conn: [tuple(r) for r in conn.execute(stmt)])


def test_a_quiet_series_is_complete_once(catalog: Catalog) -> None:  # noqa: F811
    catalog.add_instance(record(1))
    catalog.add_instance(record(2, received_at=RECEIVED + timedelta(seconds=30)))
    assert complete_series(catalog, RECEIVED + timedelta(seconds=60), QUIET, "unet/1") == []
    later = RECEIVED + timedelta(seconds=91)
    assert complete_series(catalog, later, QUIET, "unet/1") == ["1.2.1.1"]
    assert complete_series(catalog, later + timedelta(hours=1), QUIET, "unet/1") == []
    assert segment_jobs(catalog) == [("1.2.1.1", "unet/1")]


def test_the_expected_count_completes_it_at_once(catalog: Catalog) -> None:  # noqa: F811
    for n in (1, 2, 3):
        catalog.add_instance(record(n, images_in_acquisition=3))
        now = RECEIVED + timedelta(seconds=1)
        done = complete_series(catalog, now, QUIET, "unet/1")
        assert done == ([] if n < 3 else ["1.2.1.1"])


def test_a_late_instance_opens_the_series_again(catalog: Catalog) -> None:  # noqa: F811
    catalog.add_instance(record(1))
    complete_series(catalog, RECEIVED + timedelta(minutes=5), QUIET, "unet/1")
    catalog.add_instance(record(2, received_at=RECEIVED + timedelta(minutes=10)))
    assert complete_series(catalog, RECEIVED + timedelta(minutes=10, seconds=30), QUIET,
                           "unet/1") == []
    assert complete_series(catalog, RECEIVED + timedelta(minutes=12), QUIET,
                           "unet/1") == ["1.2.1.1"]


def test_without_a_model_or_for_results_nothing_is_queued(catalog: Catalog) -> None:  # noqa: F811
    catalog.add_instance(record(1))
    catalog.add_instance(record(2, series_uid="1.2.1.2", modality="SEG",
                                object_key="H1/P1/1.2.1/1.2.1.2/1.2.1.1.2"))
    later = RECEIVED + timedelta(minutes=5)
    assert sorted(complete_series(catalog, later, QUIET, None)) == ["1.2.1.1", "1.2.1.2"]
    catalog.add_instance(record(3, series_uid="1.2.1.3", modality="SEG",
                                object_key="H1/P1/1.2.1/1.2.1.3/1.2.1.1.3"))
    assert complete_series(catalog, later, QUIET, "unet/1") == ["1.2.1.3"]
    assert segment_jobs(catalog) == []


def test_many_watchers_queue_one_job(catalog: Catalog) -> None:  # noqa: F811
    for n in range(1, 5):
        catalog.add_instance(record(n))
    later = RECEIVED + timedelta(minutes=5)
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(
        complete_series(catalog, later, QUIET, "unet/1"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(uid for r in results for uid in r) == ["1.2.1.1"]
    assert segment_jobs(catalog) == [("1.2.1.1", "unet/1")]


def test_the_state_survives_a_restart(catalog_url: str) -> None:  # noqa: F811
    with Catalog(catalog_url) as first:
        first.add_instance(record(1))
        complete_series(first, RECEIVED + timedelta(minutes=5), QUIET, "unet/1")
    with Catalog(catalog_url) as second:
        assert complete_series(second, RECEIVED + timedelta(hours=5), QUIET, "unet/1") == []
        assert segment_jobs(second) == [("1.2.1.1", "unet/1")]


def test_after_reindex_old_series_are_not_segmented_again(catalog: Catalog) -> None:  # noqa: F811
    catalog.add_instance(record(1))
    assert mark_all_complete(catalog, RECEIVED) == 1
    assert complete_series(catalog, RECEIVED + timedelta(hours=1), QUIET, "unet/1") == []
    assert segment_jobs(catalog) == []
