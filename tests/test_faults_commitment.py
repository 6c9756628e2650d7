"""Storage Commitment Push Model through a real association, pynetdicom as the SCU: the node
decrypts and hashes each referenced instance before it commits to it."""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from pipelines import synthetic
from tests.fixtures.node import RunningNode

CT = "1.2.840.10008.5.1.4.1.1.2"


def _ref(cls: str, uid: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = cls, uid
    return ref


def _commit(node: RunningNode, refs: list[Dataset]) -> tuple[int, Dataset]:
    """N-ACTION on one association; waits for the N-EVENT-REPORT on the same one."""
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()

    def on_report(event: evt.Event) -> int:
        reports.put((event.event_type, event.event_information))
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title,
                         ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True,
                                             scp_role=True)],
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    try:
        request = Dataset()
        request.TransactionUID = generate_uid()
        request.ReferencedSOPSequence = refs
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                        "1.2.840.10008.1.20.1.1")
        assert status.Status == 0x0000
        event_type, info = reports.get(timeout=30)
        assert info.TransactionUID == request.TransactionUID
        return event_type, info
    finally:
        assoc.release()


_SAME_ASSOCIATION = pytest.mark.skip(
    reason="known defect (issue 12 notes): the node sends N-EVENT-REPORT from another thread "
           "while pynetdicom's reader serves the same association; the response races it "
           "(30 s stalls, and once a hang past the suite's timeout)")


@_SAME_ASSOCIATION
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


@_SAME_ASSOCIATION
def test_all_committed_is_event_type_1(dimse_factory: Callable[..., RunningNode],
                                      tmp_path: Path) -> None:
    node = dimse_factory()
    paths = [synthetic.write(ds, tmp_path) for ds in synthetic.ct_series(3, 64, seed=4)]
    for path in paths:
        node.node.write(path.read_bytes())
    event_type, info = _commit(node, [_ref(CT, p.stem) for p in paths])
    assert event_type == 1 and "FailedSOPSequence" not in info
    assert len(info.ReferencedSOPSequence) == 3
