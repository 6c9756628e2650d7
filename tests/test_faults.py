"""The fault suite's short version (bench/faults.py --short) as a test: real serve processes
killed -9 mid-push, PostgreSQL stopped mid-push, SeaweedFS (S3) killed mid-push, the home's
disk filled, 16 senders with duplicates, and 200 malformed cases over DIMSE and STOW-RS (the
full store disk, whose postponed jobs wait 30 s, runs in `make faults`). Every acknowledged
instance must be present once, whole and processed, and ``support-node verify`` must find
nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.faults import Plan, Row, run, table


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Row]:
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk is not installed (storescu missing): apt-get install dcmtk")
    plan = Plan.short()
    plan.work = tmp_path_factory.mktemp("faults")
    done = run(plan)
    from rich.console import Console

    Console(width=250).print(table(done))  # shown with -s, and in the log of a failure
    return {r.scenario.split()[0]: r for r in done}


def _nothing_lost(row: Row) -> None:
    assert row.acknowledged > 0, row
    assert row.present == row.acknowledged, row.details
    assert row.duplicates == 0, row.details
    assert row.processed == row.acknowledged, row.details
    assert row.verify_problems == 0, row.details
    assert row.ok, row


def test_kill_9_of_serve_loses_nothing_acknowledged(rows: dict[str, Row]) -> None:
    row = rows["kill"]
    assert row.rounds == 5
    _nothing_lost(row)


def test_index_outage_fails_senders_retryably_and_resumes(rows: dict[str, Row]) -> None:
    row = rows["PostgreSQL"]
    if row.notes.startswith("could not run"):
        pytest.skip(row.notes)
    _nothing_lost(row)
    assert "0 acknowledged while down" in row.notes and "node up: True" in row.notes


def test_object_store_outage_loses_nothing_and_resumes(rows: dict[str, Row]) -> None:
    """SeaweedFS killed mid-push: no sender hangs (as before the store's timeouts were
    bounded), instances are acknowledged from the durable local spool (or refused, never
    acknowledged and lost), and the uploads resume by themselves once S3 is back."""
    row = rows["S3"]
    if row.notes.startswith("could not run"):
        pytest.skip(row.notes)
    _nothing_lost(row)
    assert "node up: True" in row.notes


def test_full_disk_refuses_for_now_and_recovers_without_losing_anything(
        rows: dict[str, Row]) -> None:
    """0xA700 below the watermark and on a disk full to the last byte (not a failed write),
    the node up, no job failed while full, everything stored and processed once space is
    freed, with no restart."""
    row = rows["disk"]
    if row.notes.startswith("skipped"):
        pytest.skip(row.notes)
    _nothing_lost(row)
    assert row.acknowledged == Plan.short().outage_instances
    assert "0 acknowledged below the watermark" in row.notes, row.notes
    assert "0 failed; node up: True" in row.notes, row.notes


def test_many_senders_with_duplicates_store_each_once(rows: dict[str, Row]) -> None:
    row = rows["16"]
    _nothing_lost(row)
    assert row.acknowledged == 16 * Plan.short().per_sender


def test_malformed_corpus_gets_the_right_status_and_stores_nothing(
        rows: dict[str, Row]) -> None:
    """Each case its own status, nothing stored, the node serving after every case. (One
    case once got no status, its association ended; not reproduced in ~4600 cases since the
    UID locks stopped keeping a file open per stripe: a failure now names the sender's side
    and the node's last log lines.)"""
    row = rows["malformed"]
    assert row.rounds >= 200
    assert "DIMSE 200/200 right" in row.notes and "node up after every case: True" in row.notes
    assert row.ok, row.details


def test_a_byte_that_is_no_vr_is_malformed(tmp_path: Path) -> None:
    """Found by the corpus: two non-letters where the VR goes were read as a short VR."""
    from node.dicom.structure import check_dataset
    from node.errors import MalformedError

    name = b"\x10\x00\x10\x00PN\x04\x00Doe^"
    sex = b"\x10\x00\x40\x00" + b"!#" + b"\x02\x00F "
    with pytest.raises(MalformedError, match="no VR"):
        check_dataset(name + sex, "1.2.840.10008.1.2.1")
    assert check_dataset(name + sex.replace(b"!#", b"CS"), "1.2.840.10008.1.2.1") is False
