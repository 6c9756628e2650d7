"""Retrieval with read-ahead: C-MOVE and C-GET read the next instances while one is sent.

Through real peers: dcmtk's movescu asks, pynetdicom's storescp (or an in-process pynetdicom
SCP that is slow on purpose) receives; pynetdicom as the SCU where exact counts, a C-CANCEL
or an abort are needed.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove as Move,
)

from node.dimse.encoded import StoredDataset
from node.dimse.readahead import ReadAhead
from pipelines import synthetic
from tests.fixtures.node import RunningNode, free_port
from tests.fixtures.waiting import eventually
from tests.test_dimse import dataset_bytes
from tests.test_qr import (
    destination,  # noqa: F401  (a fixture: storescp as DEST)
    get_series,
)

Dcmtk = Callable[..., subprocess.CompletedProcess[str]]
N = 24  # several times the read-ahead depth
READER = "retrieve-read-ahead"


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == READER]


class SlowDestination:
    """A pynetdicom Storage SCP on 127.0.0.1 that takes ``delay`` seconds per instance."""

    def __init__(self, delay: float) -> None:
        self.received: list[str] = []
        self.ended = threading.Event()

        def store(event: Any) -> int:
            time.sleep(delay)
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000

        ae = AE(ae_title="SLOW")
        ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.port = free_port()
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, store), (evt.EVT_RELEASED, self._end),
                          (evt.EVT_ABORTED, self._end)])

    def _end(self, event: Any) -> None:
        self.ended.set()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def slow() -> Iterator[SlowDestination]:
    dest = SlowDestination(delay=0.05)
    yield dest
    dest.close()


@pytest.fixture
def series_node(dimse_factory: Callable[..., RunningNode], destination: tuple[int, Path],  # noqa: F811
                slow: SlowDestination, tmp_path: Path
                ) -> tuple[RunningNode, list[pydicom.Dataset], dict[str, Path]]:
    node = dimse_factory({"destinations": {
        "DEST": {"host": "127.0.0.1", "port": destination[0]},
        "SLOW": {"host": "127.0.0.1", "port": slow.port}}})
    series = list(synthetic.ct_series(N, size=64, seed=3))
    files = {}
    for ds in series:
        path = synthetic.write(ds, tmp_path / "src")
        node.node.write(path.read_bytes())
        files[str(ds.SOPInstanceUID)] = path
    return node, series, files


def _identifier(ds: pydicom.Dataset) -> pydicom.Dataset:
    ident = pydicom.Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = ds.StudyInstanceUID
    ident.SeriesInstanceUID = ds.SeriesInstanceUID
    return ident


def _move(node: RunningNode, ident: pydicom.Dataset, dest: str,
          on_pending: Callable[[Any, int], bool] | None = None,
          identifiers: list[pydicom.Dataset | None] | None = None) -> list[pydicom.Dataset]:
    """C-MOVE by pynetdicom; every response's status data set (and its identifier, into
    ``identifiers``). ``on_pending(assoc, n)`` after the n-th pending response; True stops
    reading responses (the caller acted)."""
    ae = AE(ae_title="PYTEST")
    ae.add_requested_context(Move)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    responses = []
    try:
        for status, identifier in assoc.send_c_move(ident, dest, Move, msg_id=9):
            if not status:
                break
            responses.append(status)
            if identifiers is not None:
                identifiers.append(identifier)
            if on_pending is not None and int(status.Status) in (0xFF00, 0xFF01) \
                    and on_pending(assoc, len(responses)):
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return responses


def _object(node: RunningNode, sop_uid: str) -> Path:
    store = Path(node.settings.store.url.removeprefix("file://"))
    [path] = [p for p in store.rglob("original.dcm") if p.parent.name == sop_uid]
    return path


def test_movescu_gets_every_instance_byte_identical(series_node, destination,  # noqa: F811
                                                    dcmtk: Dcmtk) -> None:
    node, series, files = series_node
    result = dcmtk("movescu", "-S", "-aem", "DEST", "-aec", node.ae_title,
                   "-k", "QueryRetrieveLevel=SERIES",
                   "-k", f"StudyInstanceUID={series[0].StudyInstanceUID}",
                   "-k", f"SeriesInstanceUID={series[0].SeriesInstanceUID}",
                   "127.0.0.1", str(node.port))
    assert result.returncode == 0, result.stderr
    arrived = sorted(p for p in destination[1].rglob("*") if p.is_file())
    assert len(arrived) == N
    for path in arrived:
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(files[sop].read_bytes())
    assert eventually(lambda: not _readers(), 10)


def test_a_damaged_and_a_missing_instance_are_two_failed_sub_operations(
        series_node, destination) -> None:  # noqa: F811
    node, series, _ = series_node
    damaged, missing = str(series[5].SOPInstanceUID), str(series[17].SOPInstanceUID)
    path = _object(node, damaged)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    _object(node, missing).unlink()

    identifiers: list[pydicom.Dataset | None] = []
    responses = _move(node, _identifier(series[0]), "DEST", identifiers=identifiers)
    final = responses[-1]
    assert int(final.Status) == 0xB000  # sub-operations complete, one or more failures
    assert int(final.NumberOfFailedSuboperations) == 2
    assert int(final.NumberOfCompletedSuboperations) == N - 2
    assert int(final.get("NumberOfRemainingSuboperations") or 0) == 0
    # The final response names the two that failed (PS3.4 C.4.2.3.1), and each pending
    # response counts down: the failed ones count as done too.
    assert identifiers[-1] is not None
    assert set(identifiers[-1].FailedSOPInstanceUIDList) == {damaged, missing}
    assert [int(r.NumberOfRemainingSuboperations) for r in responses[:-1]] == \
        list(range(N - 1, -1, -1))
    arrived = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
               for p in destination[1].rglob("*") if p.is_file()}
    assert len(arrived) == N - 2 and not arrived & {damaged, missing}


def test_getscu_sees_a_missing_instance_as_one_failed_and_none_remaining(
        series_node, dcmtk: Dcmtk, tmp_path: Path) -> None:
    node, series, _ = series_node
    _object(node, str(series[3].SOPInstanceUID)).unlink()
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk("getscu", "-v", "-S", "-od", str(out), "-aec", node.ae_title,
                   "-k", "QueryRetrieveLevel=SERIES",
                   "-k", f"StudyInstanceUID={series[0].StudyInstanceUID}",
                   "-k", f"SeriesInstanceUID={series[0].SeriesInstanceUID}",
                   "127.0.0.1", str(node.port))
    report = result.stdout + result.stderr
    final = report[report.index("Final status report"):]
    assert re.search(r"Remaining Suboperations\s*:\s*0\b", final), final
    assert re.search(rf"Completed Suboperations\s*:\s*{N - 1}\b", final), final
    assert re.search(r"Failed Suboperations\s*:\s*1\b", final), final
    assert len(list(out.iterdir())) == N - 1


def test_c_cancel_stops_the_move_and_its_reader(series_node, slow: SlowDestination) -> None:
    node, series, _ = series_node

    def cancel(assoc: Any, n: int) -> bool:
        assoc.send_c_cancel(9, query_model=Move)
        return False  # read on until the final response

    responses = _move(node, _identifier(series[0]), "SLOW", on_pending=cancel)
    final = responses[-1]
    assert int(final.Status) == 0xFE00
    assert 0 < int(final.NumberOfCompletedSuboperations) < N
    assert int(final.NumberOfRemainingSuboperations) > 0
    assert eventually(lambda: not _readers(), 10)
    assert slow.ended.wait(10)  # the sub-association was closed
    assert len(slow.received) < N


def test_an_aborted_move_leaves_no_reader_and_closes_the_sub_association(
        series_node, slow: SlowDestination) -> None:
    node, series, _ = series_node

    def abort(assoc: Any, n: int) -> bool:
        assoc.abort()
        return True

    _move(node, _identifier(series[0]), "SLOW", on_pending=abort)
    assert eventually(lambda: not _readers(), 10)
    assert slow.ended.wait(10)
    assert len(slow.received) < N
    # ... and the node keeps serving retrievals.
    responses = _move(node, _identifier(series[0]), "DEST")
    assert int(responses[-1].Status) == 0x0000
    assert int(responses[-1].NumberOfCompletedSuboperations) == N


def test_get_of_the_series_by_getscu(series_node, dcmtk: Dcmtk, tmp_path: Path) -> None:
    node, series, files = series_node
    assert len(get_series(dcmtk, node, series[0], tmp_path / "got", files)) == N
    assert eventually(lambda: not _readers(), 10)


# -- the read-ahead itself ------------------------------------------------------------------


def test_read_ahead_keeps_order_hands_errors_over_and_stays_bounded() -> None:
    started: list[int] = []
    consumed: list[int] = []
    lead: list[int] = []

    def load(i: int) -> tuple[int, int]:
        started.append(i)
        lead.append(len(started) - len(consumed))
        if i == 3:
            raise FileNotFoundError("gone")
        return i * 10, 1

    with ReadAhead(range(20), load, depth=4) as ahead:
        out = []
        for fetched in ahead:
            time.sleep(0.002)  # a slow sender: the reader runs ahead, up to its depth
            consumed.append(fetched.ref)
            out.append(fetched.value if fetched.error is None else type(fetched.error))
    assert out == [0, 10, 20, FileNotFoundError, *[i * 10 for i in range(4, 20)]]
    assert max(lead) <= 4 + 1  # depth waiting, plus the one being read
    assert not ahead.alive


def test_read_ahead_is_bounded_by_bytes() -> None:
    waiting: list[int] = []

    def load(i: int) -> tuple[int, int]:
        waiting.append(i)
        return i, 40

    ahead = ReadAhead(range(10), load, depth=8, max_bytes=100)
    time.sleep(0.3)
    assert len(waiting) == 3  # 3 × 40 bytes >= 100: no fourth read while nobody consumes
    it = iter(ahead)
    next(it)
    assert eventually(lambda: len(waiting) == 4, 10)
    ahead.close()
    assert not ahead.alive


def test_read_ahead_stops_when_asked_or_closed() -> None:
    stop = threading.Event()
    ahead = ReadAhead(range(1000), lambda i: (i, 1), depth=2, should_stop=stop.is_set,
                      poll=0.05)
    assert ahead.alive
    stop.set()
    assert eventually(lambda: not ahead.alive, 2)
    assert len(list(ahead)) <= 2  # what was read before the stop, then the end

    closed = ReadAhead(range(1000), lambda i: (i, 1), depth=2)
    first = next(iter(closed))
    assert first.value == 0
    closed.close()
    assert not closed.alive


def test_a_stored_dataset_is_never_encoded_again(tmp_path: Path) -> None:
    from pynetdicom.dsutils import encode

    ds = next(synthetic.ct_series(1, size=16))
    data = synthetic.write(ds, tmp_path).read_bytes()
    stored = StoredDataset.parse(data, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    assert stored is not None
    assert stored.encoded == dataset_bytes(data)
    assert stored.decoded().SOPInstanceUID == ds.SOPInstanceUID
    assert encode(stored, False, True) is None  # pydicom refuses: no half data set sent
    assert StoredDataset.parse(dataset_bytes(data), "1.2", "1.2.3") is None  # no file meta


def test_send_to_a_destination_reads_ahead_and_counts_a_damaged_instance(
        series_node, destination) -> None:  # noqa: F811
    """"Send to PACS" (node.dimse.send, behind the web API's /send) goes the same way."""
    from node.archive import Archive
    from node.dimse.send import DimseSender

    node, series, files = series_node
    damaged = str(series[2].SOPInstanceUID)
    path = _object(node, damaged)
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    core = node.node.core
    refs = Archive(core).instances(None, str(series[0].StudyInstanceUID),
                                   str(series[0].SeriesInstanceUID))
    report = DimseSender(core.settings, core.fs)("DEST", refs)
    assert (report.sent, report.failed) == (N - 1, 1)
    arrived = [p for p in destination[1].rglob("*") if p.is_file()]
    assert len(arrived) == N - 1
    for p in arrived:
        sop = str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(p.read_bytes()) == dataset_bytes(files[sop].read_bytes())
    assert eventually(lambda: not _readers(), 10)
