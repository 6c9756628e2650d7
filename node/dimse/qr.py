"""Query/Retrieve SCP handlers: C-FIND, C-MOVE and C-GET over the index and the store.

Queries run on the index only (``node.index.query``); retrievals decrypt originals from the
store and send them in their stored transfer syntax (pynetdicom converts between the
uncompressed syntaxes when the peer accepted only another; a compressed instance the peer
cannot take is a failed sub-operation). Callers on the allow-list see their own hospital
only; on a node that accepts any caller, everyone sees everything.
"""

from __future__ import annotations

import io
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.access import AccessPolicy, NotAllowedError, Right
from node.dimse.encoded import (
    StoredDataset,
    StoreSender,
    UnreadableInstance,
    association_gone,
)
from node.dimse.identifier import Identifier, find, model_for_sop_class, parse_identifier
from node.dimse.readahead import ReadAhead
from node.dimse.status import Status, qr_status_for
from node.dimse.transport import tune_connection
from node.errors import CatalogError
from node.index.audit import AuditLog, Entry, scope
from node.index.catalog import Catalog
from node.index.query import InstanceRef, QueryError, instances_for
from node.layout import ORIGINAL
from node.settings import Destination, Settings

log = logging.getLogger("support_node.qr")

PENDING = Status.PENDING
CANCELLED = Status.CANCELLED


@dataclass(frozen=True)
class QRDeps:
    catalog: Catalog
    fs: Any  # the encrypted filesystem
    settings: Settings
    policy: AccessPolicy
    audit: AuditLog | None = None


def _audit(event: Any, deps: QRDeps, action: str, outcome: str,
           ident: Identifier | None = None, refs: list[InstanceRef] | None = None,
           detail: str = "") -> None:
    """An audit entry for a query or retrieve: the keys matched on, never their values."""
    if deps.audit is None:
        return
    calling = _calling(event)
    keys = ",".join(c.keyword for c in ident.conditions) if ident is not None else ""
    level = ident.level.value if ident is not None else "?"
    studies = {r.study_uid for r in refs or ()}
    deps.audit.record(Entry(
        action, "dimse", calling, outcome, scope(deps.policy.for_ae(calling).hospitals),
        study_uid=next(iter(studies)) if len(studies) == 1 else None,
        count=len(refs) if refs is not None else None,
        detail=" ".join(p for p in (f"{level} level", f"keys {keys}" if keys else "",
                                    detail) if p)))


def _calling(event: Any) -> str:
    title = event.assoc.requestor.ae_title
    return title.strip() if isinstance(title, str) else ""


def _query(event: Any, deps: QRDeps, retrieve: bool) -> Identifier:
    """Parses the identifier and limits it to the hospitals the caller may see.

    Raises NotAllowedError, QueryError (and what pydicom raises for an unreadable one)."""
    access = deps.policy.for_ae(_calling(event))
    access.require(Right.RETRIEVE if retrieve else Right.QUERY)
    model = model_for_sop_class(str(event.request.AffectedSOPClassUID))
    ident = parse_identifier(event.identifier, model, retrieve=retrieve)
    return ident if access.hospitals is None else ident.restricted_to(access.hospitals)


def handle_find(event: Any, deps: QRDeps) -> Iterator[tuple[int, Any]]:
    """EVT_C_FIND: pending responses as results stream; C-CANCEL honoured."""
    try:
        query = _query(event, deps, retrieve=False)
    except (QueryError, NotAllowedError) as exc:
        status = qr_status_for(exc, retrieve=False)
        log.warning("C-FIND from %s refused: 0x%04X %s", _calling(event), status, exc)
        _audit(event, deps, "query", f"refused 0x{status:04X}")
        yield status, None
        return
    except Exception:  # an identifier pydicom cannot read
        log.exception("C-FIND from %s: unreadable identifier", _calling(event))
        yield Status.FIND_UNABLE, None
        return
    sent = 0
    try:
        for response in find(deps.catalog, query):
            if event.is_cancelled:
                _audit(event, deps, "query", f"cancelled after {sent} matches", query)
                yield CANCELLED, None
                return
            response.RetrieveAETitle = deps.settings.dimse.ae_title
            sent += 1
            yield PENDING, response
    except CatalogError as exc:
        log.error("C-FIND from %s failed: %s", _calling(event), exc)
        yield qr_status_for(exc, retrieve=False), None
        return
    log.info("C-FIND from %s at %s level: %d matches", _calling(event), query.level.value, sent)
    _audit(event, deps, "query", f"{sent} matches", query)


def load_original(fs: Any, ref: InstanceRef, decompress: bool = False
                  ) -> tuple[pydicom.Dataset, int]:
    """The stored original of ``ref`` ready to send by C-STORE (C-MOVE, C-GET, send to
    PACS), read through the streaming decryptor, and its size in bytes: as stored (a
    StoredDataset, only its file meta parsed), or parsed (no file meta) and, with
    ``decompress``, decompressed. Raises what the store raises (FileNotFoundError,
    IntegrityError, ...)."""
    with fs.open(f"{ref.object_key}/{ORIGINAL}", "rb") as fh:
        data = fh.read()
    if not decompress:
        stored = StoredDataset.parse(data, ref.sop_class_uid, ref.sop_uid)
        if stored is not None:
            return stored, len(data)
    ds = pydicom.dcmread(io.BytesIO(data), force=True)  # no file meta: pynetdicom decides
    if decompress:
        try:
            ds.decompress()
            log.info("C-GET: %s decompressed for a requester without %s", ref.sop_uid,
                     UID(ref.transfer_syntax_uid).name)
        except Exception as exc:  # no decoder for this syntax: pynetdicom fails it
            log.warning("C-GET: cannot convert %s: %s", ref.sop_uid, type(exc).__name__)
    return ds, len(data)


def _must_decompress(event: Any, ref: InstanceRef) -> bool:
    """C-GET: whether the requester accepted this SOP class only in uncompressed syntaxes
    while the instance is stored compressed (then it is sent decompressed, Explicit VR
    Little Endian); otherwise it goes as stored (pynetdicom converts between uncompressed
    syntaxes; a class the requester did not accept at all fails in pynetdicom)."""
    syntaxes = {str(cx.transfer_syntax[0]) for cx in event.assoc.accepted_contexts
                if cx.abstract_syntax == ref.sop_class_uid and cx.as_scu}
    stored = UID(ref.transfer_syntax_uid)
    if not syntaxes or str(stored) in syntaxes or not stored.is_compressed:
        return False
    return any(not UID(s).is_compressed for s in syntaxes)


class _CancelLatch:
    """``event.is_cancelled``, asked from two threads: pynetdicom answers True once only (it
    takes the C-CANCEL off its list), so the first True is kept."""

    def __init__(self, event: Any) -> None:
        self._event = event
        self._lock = threading.Lock()
        self._seen = False

    def __call__(self) -> bool:
        with self._lock:
            self._seen = self._seen or bool(self._event.is_cancelled)
            return self._seen


def _sub_operations(event: Any, deps: QRDeps, refs: list[InstanceRef],
                    sender: Callable[[], StoreSender | None], fit: bool = False
                    ) -> Iterator[tuple[int, Any]]:
    """One pending result per instance, read ahead of the sender (node.dimse.readahead);
    a C-CANCEL ends them with 0xFE00. An instance that cannot be read is one failed
    sub-operation. ``sender()``: the StoreSender in use, uninstalled at the end."""
    cancel = _CancelLatch(event)

    def stop() -> bool:  # asked by the reader thread too
        return cancel() or association_gone(event.assoc)

    def load(ref: InstanceRef) -> tuple[pydicom.Dataset, int]:
        return load_original(deps.fs, ref, decompress=fit and _must_decompress(event, ref))

    cancelled = False
    handed = 0
    try:
        with ReadAhead(refs, load, should_stop=stop) as ahead:
            for fetched in ahead:
                if stop():
                    cancelled = cancel()
                    break
                if fetched.error is not None:  # integrity error, missing object
                    log.error("retrieve: cannot read %s: %s", fetched.ref.sop_uid,
                              type(fetched.error).__name__)
                    # Its C-STORE fails at once: one failed sub-operation, named in the
                    # final response; the others go on.
                    handed += 1
                    yield PENDING, UnreadableInstance(fetched.ref.sop_class_uid,
                                                      fetched.ref.sop_uid)
                    continue
                handed += 1
                yield PENDING, fetched.value
            else:  # the reader stopped early for a cancel?
                cancelled = handed < len(refs) and cancel()
    finally:
        installed = sender()
        if installed is not None:
            installed.uninstall()
    if cancelled:
        yield CANCELLED, None


def _matches(event: Any, deps: QRDeps, service: str) -> tuple[int | None, list[InstanceRef]]:
    """Parses a retrieve identifier; returns (failure status or None, instances)."""
    try:
        ident = _query(event, deps, retrieve=True)
        refs = list(instances_for(deps.catalog, ident.query))
    except (QueryError, NotAllowedError) as exc:
        status = qr_status_for(exc, retrieve=True)
        log.warning("retrieve from %s refused: 0x%04X %s", _calling(event), status, exc)
        _audit(event, deps, "retrieve", f"refused 0x{status:04X}", detail=service)
        return status, []
    except CatalogError as exc:
        log.error("retrieve from %s failed: %s", _calling(event), exc)
        return qr_status_for(exc, retrieve=True), []
    except Exception:
        log.exception("retrieve from %s: unreadable identifier", _calling(event))
        return Status.RETRIEVE_UNABLE, []
    _audit(event, deps, "retrieve", f"{len(refs)} instances to send", ident, refs, service)
    return None, refs


def handle_move(event: Any, deps: QRDeps) -> Iterator[Any]:
    """EVT_C_MOVE: sub-operations to a destination named in config; 0xA801 otherwise."""
    destination = deps.settings.destination(str(event.move_destination).strip())
    if destination is None:
        log.warning("C-MOVE from %s to unknown destination %s", _calling(event),
                    str(event.move_destination).strip())
        yield None, None
        return
    failure, refs = _matches(event, deps, f"C-MOVE to {destination.ae_title}")
    if failure is not None:
        # pynetdicom sends a failure status only from within the sub-operations (with no
        # sub-operations it answers Success, and a status in their place is a 0xC513), so
        # the refusal comes as the first "sub-operation": its status ends the move (on an
        # association to the destination that carries nothing but Verification).
        yield destination.host, destination.port, {"contexts": [build_context(Verification)]}
        yield 1
        yield failure, None
        return
    # The outgoing association gets the same socket tuning as incoming ones: without it the
    # destination's delayed ACKs hold every sub-operation (bench: 33/s untuned, ~130/s tuned).
    # Its C-STOREs go through a StoreSender (node.dimse.encoded), installed once it opens.
    senders: list[StoreSender] = []

    def opened(sub: Any) -> None:
        senders.append(StoreSender(sub.assoc, hold_reactor=True).install())

    options: dict[str, Any] = {"contexts": _contexts(refs),
                               "evt_handlers": [(evt.EVT_CONN_OPEN, tune_connection),
                                                (evt.EVT_CONN_OPEN, opened)]}
    if destination.tls:
        options["tls_args"] = (_tls_context(destination), destination.host)
    yield destination.host, destination.port, options
    yield len(refs)
    yield from _sub_operations(event, deps, refs, lambda: senders[-1] if senders else None)


def _tls_context(destination: Destination) -> ssl.SSLContext:
    """A client TLS context: the destination's certificate and host name are checked."""
    context = ssl.create_default_context(
        cafile=str(destination.ca_file) if destination.ca_file else None)
    if destination.cert_file and destination.key_file:
        context.load_cert_chain(str(destination.cert_file), str(destination.key_file))
    return context


def handle_get(event: Any, deps: QRDeps) -> Iterator[Any]:
    """EVT_C_GET: storage sub-operations on the same association."""
    failure, refs = _matches(event, deps, "C-GET")
    if failure is not None:
        yield 1  # as for C-MOVE: with 0 sub-operations pynetdicom would answer Success
        yield failure, None
        return
    yield len(refs)
    sender = StoreSender(event.assoc, hold_reactor=False).install()
    yield from _sub_operations(event, deps, refs, lambda: sender, fit=True)


def _contexts(refs: list[InstanceRef]) -> list[Any]:
    """Presentation contexts for a move (at most 128, the protocol's limit).

    Each stored syntax gets a context of its own, so that an acceptor cannot pick another
    syntax for it (pynetdicom then sends the bytes as stored); one more context per SOP class
    offers the uncompressed syntaxes pynetdicom can convert to if the stored one is refused.
    """
    wanted: dict[str, set[str]] = {}
    for ref in refs:
        wanted.setdefault(ref.sop_class_uid, set()).add(ref.transfer_syntax_uid)
    contexts = []
    for sop_class, syntaxes in sorted(wanted.items()):
        contexts += [build_context(sop_class, syntax) for syntax in sorted(syntaxes)]
        contexts.append(build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    return contexts[:128]


__all__ = ["QRDeps", "handle_find", "handle_get", "handle_move"]
