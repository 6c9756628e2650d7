"""The DIMSE service: Verification and Storage SCP over pynetdicom.

Handlers receive what they need as arguments (pynetdicom's ``(event, handler, args)``);
exceptions become a status in exactly one place (``status_for``).
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

import pydicom.uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from node import metrics
from node.access import AccessPolicy
from node.dimse.qr import QRDeps, handle_find, handle_get, handle_move
from node.dimse.status import Status, status_for
from node.dimse.transport import tune_connection
from node.errors import IngestError, NodeError
from node.ingest import Ingest, Source
from node.settings import DimseSettings

log = logging.getLogger("support_node.dimse")

_LOSSLESS = frozenset((
    pydicom.uid.DeflatedExplicitVRLittleEndian, pydicom.uid.RLELossless, pydicom.uid.JPEGLossless,
    pydicom.uid.JPEGLosslessSV1, pydicom.uid.JPEGLSLossless, pydicom.uid.JPEG2000Lossless,
    pydicom.uid.JPEG2000MCLossless, pydicom.uid.HTJ2KLossless, pydicom.uid.HTJ2KLosslessRPCL,
))


def _preference(uid: pydicom.uid.UID) -> int:
    """Where a syntax stands when a peer offers several in one context (we choose).

    Explicit VR little endian first (nothing lost, byte-exact retrieval of most archives),
    then the lossless compressions, then the other uncompressed ones; lossy syntaxes last,
    so that a sender is never asked to compress lossily what it holds uncompressed.
    """
    if uid == pydicom.uid.ExplicitVRLittleEndian:
        return 0
    if uid in _LOSSLESS:
        return 1
    if not uid.is_compressed:
        return 2
    return 3


# Stored as received, so every transfer syntax pydicom knows is acceptable: uncompressed,
# deflate, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, MPEG, HEVC.
TRANSFER_SYNTAXES = [str(ts) for ts in sorted(pydicom.uid.AllTransferSyntaxes, key=_preference)]


@dataclass(frozen=True)
class StoreDeps:
    ingest: Ingest
    policy: AccessPolicy


def handle_store(event: Any, deps: StoreDeps) -> int:
    """EVT_C_STORE: ingest the data set as received; success only once durable.

    Statuses: 0x0000 stored (or already stored, or kept as a conflict);
    0xC000 malformed / cut short; 0xC001 SOP Instance UID differs from the command's;
    0xA900 SOP Class differs; 0xA701 store failed; 0xA702 index failed (both retryable).
    """
    requestor = event.assoc.requestor
    calling = requestor.ae_title.strip() if isinstance(requestor.ae_title, str) else ""
    hospital = deps.policy.for_ae(calling).hospital
    if hospital is None:  # only reachable if the association check was bypassed
        return int(Status.OUT_OF_RESOURCES)
    request = event.request
    try:
        data = event.encoded_dataset(include_meta=True)
        result = deps.ingest.accept(
            data,
            Source(hospital=hospital, via="dimse", who=calling),
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
        )
    except IngestError as exc:
        status = status_for(exc)
        log.warning("refused an instance from %s: 0x%04X %s", calling, status, exc)
        return int(status)
    except NodeError as exc:
        status = status_for(exc)
        log.error("could not keep an instance from %s: 0x%04X %s", calling, status, exc)
        return int(status)
    except Exception:
        log.exception("unexpected failure while storing an instance from %s", calling)
        return int(Status.OUT_OF_RESOURCES)
    # A conflict is durably kept (apart from the first copy), so it is a success too:
    # the sender may forget it. The log and `ls` report it.
    metrics.INSTANCES.labels("dimse", result.outcome.value).inc()
    metrics.BYTES.labels("dimse").inc(len(data))
    return int(Status.SUCCESS)


_open: set[int] = set()
_open_lock = threading.Lock()


def _opened(event: Any) -> None:
    with _open_lock:
        _open.add(id(event.assoc))
        metrics.OPEN_ASSOCIATIONS.set(len(_open))


def _closed(event: Any) -> None:
    with _open_lock:
        _open.discard(id(event.assoc))
        metrics.OPEN_ASSOCIATIONS.set(len(_open))


QR_MODELS = (
    PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet,
)


def build_ae(dimse: DimseSettings) -> AE:
    """The application entity with every storage SOP class and transfer syntax supported."""
    ae = AE(ae_title=dimse.ae_title)
    ae.maximum_associations = dimse.max_associations
    ae.maximum_pdu_size = dimse.max_pdu
    ae.network_timeout = dimse.network_timeout
    ae.acse_timeout = 30
    ae.dimse_timeout = dimse.network_timeout
    ae.add_supported_context(Verification)
    for model in QR_MODELS:
        ae.add_supported_context(model)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        # Both roles: peers store to us (SCU) and take C-GET sub-operations from us (SCP).
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES,
                                 scu_role=True, scp_role=True)
    if not dimse.accepts_any_caller:
        ae.require_calling_aet = [c.ae_title for c in dimse.callers]
    return ae


class SharedPortServer(ThreadedAssociationServer):
    """An association server whose port other worker processes may bind too (SO_REUSEPORT):
    the kernel hands each new connection to one of them."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def start(dimse: DimseSettings, ingest: Ingest, policy: AccessPolicy,
          shared_port: bool = False, qr: QRDeps | None = None) -> ThreadedAssociationServer:
    """Starts the SCP in the background on ``dimse.host:dimse.port`` (port 0: any free port).

    ``shared_port``: let other worker processes listen on the same port.
    Returns the running server; ``server.server_address[1]`` is the bound port;
    ``server.shutdown()`` stops it. Raises OSError when the port cannot be bound.
    """
    ae = build_ae(dimse)
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, tune_connection),
        (evt.EVT_ESTABLISHED, _opened), (evt.EVT_RELEASED, _closed), (evt.EVT_ABORTED, _closed),
        (evt.EVT_C_STORE, handle_store, [StoreDeps(ingest, policy)]),
    ]
    if qr is not None:
        handlers += [(evt.EVT_C_FIND, handle_find, [qr]), (evt.EVT_C_MOVE, handle_move, [qr]),
                     (evt.EVT_C_GET, handle_get, [qr])]
    server = ae.make_server(
        (dimse.host, dimse.port), evt_handlers=handlers,
        server_class=SharedPortServer if shared_port else ThreadedAssociationServer,
    )
    thread = threading.Thread(target=server.serve_forever, name="dimse-acceptor", daemon=True)
    thread.start()
    ae._servers.append(server)  # noqa: SLF001 - so ae.shutdown() stops it, as start_server does
    log.info("DIMSE %s listening on %s:%d", dimse.ae_title, dimse.host, server.server_address[1])
    return server
