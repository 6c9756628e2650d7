"""The DIMSE service: Verification, Storage and Query/Retrieve SCP over pynetdicom.

Handlers receive what they need as arguments (pynetdicom's ``(event, handler, args)``);
exceptions become a status in exactly one place (``status_for``). Who gets an association
is ``node.dimse.gate``'s decision; how many connections a stranger may hold, and for how
long, ``node.dimse.listener``'s. With ``[dimse.tls]`` a second listener speaks TLS only.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

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

from node import metrics
from node.access import AccessPolicy
from node.dimse.commitment import COMMIT_UID, CommitDeps, handle_action
from node.dimse.gate import ACSE_TIMEOUT, Gate
from node.dimse.limits import ConnectionLimit
from node.dimse.listener import Listener
from node.dimse.qr import QRDeps, handle_find, handle_get, handle_move
from node.dimse.received import part10
from node.dimse.size_guard import SizeGuard
from node.dimse.status import Status, status_for
from node.dimse.tls import server_context
from node.dimse.transport import tune_connection
from node.errors import IngestError, NodeError
from node.ingest import Ingest, Source
from node.pressure import Pressure
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
    pressure: Pressure | None = None


def handle_store(event: Any, deps: StoreDeps) -> int:
    """EVT_C_STORE: ingest the data set as received; success only once durable.

    Statuses: 0x0000 stored (or already stored, or kept as a conflict);
    0xC000 malformed / cut short; 0xC001 SOP Instance UID differs from the command's;
    0xA900 SOP Class differs; 0xA701 store failed; 0xA702 index failed (both retryable);
    0xA700 refused for now: too little free space or too long a queue (node.pressure).
    """
    requestor = event.assoc.requestor
    calling = requestor.ae_title.strip() if isinstance(requestor.ae_title, str) else ""
    hospital = deps.policy.for_ae(calling).hospital
    if hospital is None:  # only reachable if the association check was bypassed
        return int(Status.OUT_OF_RESOURCES)
    if deps.pressure is not None and not (reading := deps.pressure.state()).ok:
        log.debug("refused an instance from %s for now: %s", calling, reading.reason)
        metrics.INSTANCES.labels("dimse", "refused").inc()
        return int(Status.OUT_OF_RESOURCES)
    request = event.request
    started = time.perf_counter()
    try:
        data = part10(event)
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
    # From the whole data set in hand to the answer (what the sender waits for beyond
    # the transfer itself).
    metrics.INGEST_SECONDS.labels("acknowledge").observe(time.perf_counter() - started)
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


# pynetdicom's own association limit counts connections that never sent a request; the
# gate counts admitted associations instead, so pynetdicom's is set out of the way.
_PYNETDICOM_LIMIT = 1 << 16


def build_ae(dimse: DimseSettings) -> AE:
    """The application entity with every storage SOP class and transfer syntax supported.

    Admission (called and calling AE titles, ``max_associations``) is left to the gate."""
    ae = AE(ae_title=dimse.ae_title)
    ae.maximum_associations = _PYNETDICOM_LIMIT
    ae.maximum_pdu_size = dimse.max_pdu
    ae.network_timeout = dimse.network_timeout
    ae.acse_timeout = ACSE_TIMEOUT
    ae.dimse_timeout = dimse.network_timeout
    ae.add_supported_context(Verification)
    # Storage Commitment: both roles accepted, for SCUs that propose them (the report on the
    # same association needs none; node.dimse.commitment).
    ae.add_supported_context(COMMIT_UID, scu_role=True, scp_role=True)
    for model in QR_MODELS:
        ae.add_supported_context(model)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        # Both roles: peers store to us (SCU) and take C-GET sub-operations from us (SCP).
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES,
                                 scu_role=True, scp_role=True)
    return ae


class DimseService:
    """The running SCP: the plain listener and, with ``[dimse.tls]``, the TLS one.

    ``server_address`` / ``tls_address``: where they listen (``tls_address`` None without
    TLS); ``shutdown()`` stops both.
    """

    def __init__(self, plain: Listener, tls: Listener | None, gate: Gate) -> None:
        self.plain = plain
        self.tls = tls
        self.gate = gate

    @property
    def server_address(self) -> Any:
        return self.plain.server_address

    @property
    def tls_address(self) -> Any:
        return None if self.tls is None else self.tls.server_address

    def shutdown(self) -> None:
        for listener in (self.tls, self.plain):
            if listener is not None:
                listener.shutdown()


def start(dimse: DimseSettings, ingest: Ingest, policy: AccessPolicy,
          shared_port: bool = False, qr: QRDeps | None = None,
          pressure: Pressure | None = None) -> DimseService:
    """Starts the SCP in the background on ``dimse.host:dimse.port`` (port 0: any free port)
    and, with ``[dimse.tls]``, its TLS listener on ``dimse.tls.port``.

    ``shared_port``: let other worker processes listen on the same ports. ``pressure``:
    asked before each C-STORE (0xA700 while it says no).
    Raises OSError when a port cannot be bound, ConfigError when the TLS files cannot be
    loaded.
    """
    ae = build_ae(dimse)
    gate = Gate(dimse, policy)
    handlers: list[Any] = [
        *gate.handlers(),
        *SizeGuard(dimse.max_instance_bytes).handlers(),
        (evt.EVT_CONN_OPEN, tune_connection),
        (evt.EVT_ESTABLISHED, _opened), (evt.EVT_RELEASED, _closed), (evt.EVT_ABORTED, _closed),
        (evt.EVT_C_STORE, handle_store, [StoreDeps(ingest, policy, pressure)]),
    ]
    if qr is not None:
        handlers += [(evt.EVT_C_FIND, handle_find, [qr]), (evt.EVT_C_MOVE, handle_move, [qr]),
                     (evt.EVT_C_GET, handle_get, [qr])]
        handlers.append((evt.EVT_N_ACTION, handle_action,
                         [CommitDeps(qr.catalog, qr.fs, qr.settings, qr.policy)]))
    limit = ConnectionLimit(dimse.max_connections_per_address)
    context = server_context(dimse.tls) if dimse.tls.enabled else None

    def listen(port: int, ssl_context: Any) -> Listener:
        server = cast(Listener, ae.make_server(
            (dimse.host, port), evt_handlers=handlers, ssl_context=ssl_context,
            server_class=Listener, limit=limit,
            request_timeout=dimse.association_request_timeout, reuse_port=shared_port))
        threading.Thread(target=server.serve_forever, name="dimse-acceptor",
                         daemon=True).start()
        ae._servers.append(server)  # noqa: SLF001 - so ae.shutdown() stops it too
        return server

    plain = listen(dimse.port, None)
    log.info("DIMSE %s listening on %s:%d", dimse.ae_title, dimse.host, plain.server_address[1])
    tls = None
    if context is not None:
        try:
            tls = listen(dimse.tls.port, context)
        except BaseException:
            plain.shutdown()
            raise
        log.info("DIMSE %s listening for TLS on %s:%d (client certificates %s)",
                 dimse.ae_title, dimse.host, tls.server_address[1], _client_certs(dimse))
    return DimseService(plain, tls, gate)


def _client_certs(dimse: DimseSettings) -> str:
    if dimse.tls.require_client_cert:
        return "required"
    return "checked when given" if dimse.tls.ca else "not asked for"
