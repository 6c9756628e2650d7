"""Storage Commitment Push Model through a real association, pynetdicom as the SCU: the node
decrypts and hashes each referenced instance before it commits to it."""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    Verification,
)

from pipelines import synthetic
from tests.fixtures.node import RunningNode

CT = "1.2.840.10008.5.1.4.1.1.2"
REPORT_WAIT = 10  # seconds; a report takes well under one here


def _ref(cls: str, uid: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = cls, uid
    return ref


def _request(refs: list[Dataset]) -> Dataset:
    request = Dataset()
    request.TransactionUID = generate_uid()
    request.ReferencedSOPSequence = refs
    return request


def _commit(node: RunningNode, refs: list[Dataset]) -> tuple[int, Dataset]:
    """N-ACTION on one association; waits for the N-EVENT-REPORT on the same one, then
    checks the association still serves a request (the node let its reader go again)."""
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.put((event.event_type, event.event_information))
        return 0x0000, None

    ae = AE(ae_title="PACS")
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    try:
        request = _request(refs)
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                        "1.2.840.10008.1.20.1.1")
        assert status.Status == 0x0000
        event_type, info = reports.get(timeout=REPORT_WAIT)
        assert info.TransactionUID == request.TransactionUID
        assert assoc.send_c_echo().Status == 0x0000
        return event_type, info
    finally:
        assoc.release()


def test_commitment_checks_every_instance_by_decrypting_it(
        dimse_factory: Callable[..., RunningNode], tmp_path: Path) -> None:
    node = dimse_factory()
    good, damaged = [synthetic.write(ds, tmp_path)
                     for ds in synthetic.ct_series(2, 64, seed=3)]
    for path in (good, damaged):
        node.node.write(path.read_bytes())
    record = node.node.core.catalog.get_instance(damaged.stem)
    assert record is not None
    store = Path(node.settings.store.url.removeprefix("file://"))
    blob = store / record.object_key / "original.dcm"
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit: the index still lists it
    blob.write_bytes(bytes(raw))
    missing = generate_uid()

    event_type, info = _commit(node, [_ref(CT, good.stem), _ref(CT, damaged.stem),
                                      _ref(CT, missing),
                                      _ref("1.2.840.10008.5.1.4.1.1.4", good.stem)])
    assert event_type == 2  # some failed
    assert [r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence] == [good.stem]
    failed = {(r.ReferencedSOPInstanceUID, r.ReferencedSOPClassUID): r.FailureReason
              for r in info.FailedSOPSequence}
    assert failed == {(damaged.stem, CT): 0x0110, (missing, CT): 0x0112,
                      (good.stem, "1.2.840.10008.5.1.4.1.1.4"): 0x0119}


def test_all_committed_is_event_type_1(dimse_factory: Callable[..., RunningNode],
                                      tmp_path: Path) -> None:
    node = dimse_factory()
    paths = [synthetic.write(ds, tmp_path) for ds in synthetic.ct_series(3, 64, seed=4)]
    for path in paths:
        node.node.write(path.read_bytes())
    event_type, info = _commit(node, [_ref(CT, p.stem) for p in paths])
    assert event_type == 1 and "FailedSOPSequence" not in info
    assert len(info.ReferencedSOPSequence) == 3


def test_report_comes_on_a_new_association_when_the_caller_released(
        dimse_factory: Callable[..., RunningNode], tmp_path: Path) -> None:
    """The requestor releases right after the N-ACTION response and listens, as an SCP on
    a port it asked the OS for, at the address configured as its destination."""
    reports: queue.Queue[tuple[int, Dataset, str]] = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.put((event.event_type, event.event_information,
                     str(event.assoc.requestor.ae_title).strip()))
        return 0x0000, None

    listener = AE(ae_title="PACS")
    # The node starts this association and takes the SCP role of the class on it.
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = listener.start_server(("127.0.0.1", 0), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        node = dimse_factory({"destinations": {"PACS": {
            "host": "127.0.0.1", "port": server.server_address[1]}}})
        paths = [synthetic.write(ds, tmp_path) for ds in synthetic.ct_series(2, 64, seed=5)]
        for path in paths:
            node.node.write(path.read_bytes())
        missing = generate_uid()
        ae = AE(ae_title="PACS")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert assoc.is_established
        request = _request([_ref(CT, p.stem) for p in paths] + [_ref(CT, missing)])
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                        "1.2.840.10008.1.20.1.1")
        assoc.release()
        assert status.Status == 0x0000 and assoc.is_released

        event_type, info, sender = reports.get(timeout=REPORT_WAIT)
        assert sender == node.ae_title
        assert info.TransactionUID == request.TransactionUID and event_type == 2
        assert sorted(r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence) == \
            sorted(p.stem for p in paths)
        assert [(r.ReferencedSOPInstanceUID, r.FailureReason)
                for r in info.FailedSOPSequence] == [(missing, 0x0112)]
        assert reports.empty()  # once, not also on the released association
    finally:
        server.shutdown()


def test_two_requests_on_one_association_get_a_report_each(
        dimse_factory: Callable[..., RunningNode], tmp_path: Path) -> None:
    node = dimse_factory()
    paths = [synthetic.write(ds, tmp_path) for ds in synthetic.ct_series(2, 64, seed=6)]
    for path in paths:
        node.node.write(path.read_bytes())
    reports: queue.Queue[Dataset] = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.put(event.event_information)
        return 0x0000, None

    ae = AE(ae_title="PACS")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    try:
        requests = [_request([_ref(CT, p.stem)]) for p in paths]
        for request in requests:
            status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                            "1.2.840.10008.1.20.1.1")
            assert status.Status == 0x0000
        got = {reports.get(timeout=REPORT_WAIT).TransactionUID for _ in requests}
        assert got == {r.TransactionUID for r in requests}
    finally:
        assoc.release()
