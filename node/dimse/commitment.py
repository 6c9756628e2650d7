"""Storage Commitment Push Model SCP (PS3.4 J): "do you really hold these?"

An N-ACTION (Action Type 1) names a transaction and the instances (Referenced SOP
Sequence). The node answers the N-ACTION at once (0x0000: request taken), then checks each
instance by **decrypting its original and hashing it** against the sha256 it recorded (not
by looking at the index alone), and sends an N-EVENT-REPORT: Event Type 1 when all are
committed, 2 when some failed, with the Failed SOP Sequence giving each a reason:

- 0x0112 no such object instance (not stored, or stored for another hospital: the caller
  sees its own hospital only),
- 0x0119 class/instance conflict (stored under another SOP Class),
- 0x0110 processing failure (it does not decrypt, or its hash differs: damaged).

The report goes on the same association while the peer keeps it open and answers it (an
N-EVENT-REPORT from the SCP needs no role negotiation there), else on a new association to
the caller's address in ``[destinations.<calling AE>]``, on which the node proposes the SCP
role (PS3.4 J.3.3). The check runs off the association's thread, so a peer that releases
right after the N-ACTION response is answered at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from node.access import AccessPolicy
from node.dimse import reactor
from node.dimse.qr import _tls_context
from node.index.catalog import Catalog
from node.layout import ORIGINAL
from node.settings import Settings

log = logging.getLogger("support_node.dimse")
COMMIT_UID = StorageCommitmentPushModel
COMMIT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known Storage Commitment instance
NO_SUCH_INSTANCE, CLASS_CONFLICT, PROCESSING_FAILURE = 0x0112, 0x0119, 0x0110
SUCCESS, NO_SUCH_ACTION, INVALID_ARGUMENT = 0x0000, 0x0123, 0x0115


@dataclass(frozen=True)
class CommitDeps:
    catalog: Catalog
    fs: Any  # the encrypted filesystem
    settings: Settings
    policy: AccessPolicy


def check(deps: CommitDeps, hospital: str, cls: str, uid: str) -> int:
    """0 when the instance is held whole, else its failure reason."""
    record = deps.catalog.get_instance(uid)
    if record is None or record.hospital != hospital:
        return NO_SUCH_INSTANCE
    if record.sop_class_uid != cls:
        return CLASS_CONFLICT
    try:
        digest = hashlib.sha256()
        with deps.fs.open(f"{record.object_key}/{ORIGINAL}", "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except Exception as exc:  # IntegrityError, a missing object, a store down
        log.warning("storage commitment: %s does not read back: %s", uid, type(exc).__name__)
        return PROCESSING_FAILURE
    if digest.hexdigest() != record.sha256:
        log.warning("storage commitment: %s differs from its recorded hash", uid)
        return PROCESSING_FAILURE
    return 0


def report(deps: CommitDeps, hospital: str, request: Dataset) -> tuple[int, Dataset]:
    """(event type, N-EVENT-REPORT data set) for an N-ACTION's data set."""
    committed, failed = [], []
    for item in request.get("ReferencedSOPSequence", []):
        cls, uid = str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)
        reason = check(deps, hospital, cls, uid)
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = cls, uid
        if reason:
            ref.FailureReason = reason
            failed.append(ref)
        else:
            committed.append(ref)
    out = Dataset()
    out.TransactionUID = request.TransactionUID
    if committed:
        out.ReferencedSOPSequence = committed
    if failed:
        out.FailedSOPSequence = failed
    log.info("storage commitment %s: %d committed, %d failed", request.TransactionUID,
             len(committed), len(failed))
    return (2 if failed else 1), out


def handle_action(event: Any, deps: CommitDeps) -> tuple[int, Dataset | None]:
    """EVT_N_ACTION: takes the request (0x0000) and reports from another thread.

    Runs on the association's reactor thread: the reactor is given a checkpoint it can be
    parked at (``node.dimse.reactor``), so the report is sent only after this N-ACTION's
    response and the peer's answer to it cannot be taken by the reactor.
    """
    if event.request.RequestedSOPClassUID != COMMIT_UID or event.action_type != 1:
        return NO_SUCH_ACTION, None
    try:
        request = event.action_information
        request.TransactionUID  # noqa: B018 - required
    except Exception:
        return INVALID_ARGUMENT, None
    calling = str(event.assoc.requestor.ae_title).strip()
    hospital = deps.policy.for_ae(calling).hospital
    if hospital is None:
        return NO_SUCH_ACTION, None
    checkpoint = reactor.install(event.assoc)
    threading.Thread(target=_deliver,
                     args=(event.assoc, checkpoint, deps, hospital, calling, request),
                     name="commitment", daemon=True).start()
    return SUCCESS, None


def _deliver(assoc: Any, checkpoint: reactor.Checkpoint, deps: CommitDeps, hospital: str,
             calling: str, request: Dataset) -> None:
    """Checks, then reports on the same association while the peer keeps it open, else
    (released, aborted, no answer, a failure status) on a new one to its destination."""
    try:
        event_type, data = report(deps, hospital, request)
    except Exception:
        log.exception("storage commitment %s: the check failed", request.TransactionUID)
        return
    try:
        status = reactor.send_event_report(
            assoc, checkpoint, data, event_type, COMMIT_UID, COMMIT_INSTANCE,
            float(deps.settings.dimse.network_timeout))
    except Exception as exc:  # no context for the class, an encoding failure
        log.warning("storage commitment %s: not sent on the same association: %s",
                    data.TransactionUID, type(exc).__name__)
        status = None
    if status is not None and code_to_category(status) in (STATUS_SUCCESS, STATUS_WARNING):
        log.info("storage commitment %s reported to %s on the same association",
                 data.TransactionUID, calling)
        return
    _deliver_anew(deps, calling, data, event_type)


def _deliver_anew(deps: CommitDeps, calling: str, data: Dataset, event_type: int) -> None:
    """The report on a new association to ``[destinations.<calling>]`` (PS3.4 J.3.3)."""
    dest = deps.settings.destination(calling)
    if dest is None:
        log.warning("storage commitment %s: the association is gone and %s has no "
                    "[destinations] entry to report to", data.TransactionUID, calling)
        return
    ae = AE(ae_title=deps.settings.dimse.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = deps.settings.dimse.network_timeout
    ae.add_requested_context(COMMIT_UID)
    options: dict[str, Any] = {}
    if dest.tls:
        options["tls_args"] = (_tls_context(dest), dest.host)
    # The node starts this association, so it proposes the SCP role of the class (J.3.3).
    other = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                         ext_neg=[build_role(COMMIT_UID, scp_role=True)], **options)
    if not other.is_established:
        log.warning("storage commitment %s: cannot reach %s at %s:%d", data.TransactionUID,
                    calling, dest.host, dest.port)
        return
    try:
        status, _ = other.send_n_event_report(data, event_type, COMMIT_UID, COMMIT_INSTANCE)
    finally:
        other.release()
    answer = status.get("Status")
    if answer is None or code_to_category(int(answer)) not in (STATUS_SUCCESS, STATUS_WARNING):
        log.warning("storage commitment %s: %s did not take the report (status %s)",
                    data.TransactionUID, calling,
                    "none" if answer is None else f"0x{int(answer):04X}")
        return
    log.info("storage commitment %s reported to %s on a new association",
             data.TransactionUID, calling)
