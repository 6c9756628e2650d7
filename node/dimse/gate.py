"""Admission of associations: which A-ASSOCIATE-RQ get an accept.

Checked when the request has arrived (pynetdicom's EVT_REQUESTED, before it negotiates
presentation contexts), in this order; each refusal is an A-ASSOCIATE-RJ with the PS3.8
Table 9-21 reason and one log line with the peer's address, both AE titles and the reason
(never PHI):

====================================  ===========================================
called AE title is not this node's    rejected (permanent), service user,
                                      called-AE-title-not-recognised
the caller is not admitted            rejected (permanent), service user,
(:meth:`node.access.AccessPolicy.     calling-AE-title-not-recognised
admit`: not listed, wrong address,
missing or wrong client certificate)
``max_associations`` already          rejected (transient), service provider
established                           (presentation), local-limit-exceeded
====================================  ===========================================

Only admitted associations hold a place: a connection that never sends its request takes
none (``node.dimse.listener`` closes it after ``association_request_timeout``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, NamedTuple

from pynetdicom import evt

from node.access import AccessPolicy, CallerRefusedError
from node.dimse.tls import client_certificate
from node.settings import DimseSettings

log = logging.getLogger("support_node.dimse")

# Once admitted, an association waits this long for the peer's A-RELEASE and A-ASSOCIATE
# answers (pynetdicom's default), no longer the short wait for the request.
ACSE_TIMEOUT = 30.0


class Reject(NamedTuple):
    """An A-ASSOCIATE-RJ: result, source, reason/diagnostic (PS3.8 Table 9-21)."""

    result: int
    source: int
    diagnostic: int


CALLING_AE_NOT_RECOGNISED = Reject(0x01, 0x01, 0x03)
CALLED_AE_NOT_RECOGNISED = Reject(0x01, 0x01, 0x07)
LOCAL_LIMIT_EXCEEDED = Reject(0x02, 0x03, 0x02)
NO_REASON_TRANSIENT = Reject(0x02, 0x01, 0x01)


class Gate:
    """Admits or rejects association requests and counts the admitted ones.

    One gate serves every listener of a receiving process (plain and TLS), so
    ``max_associations`` bounds them together.
    """

    def __init__(self, dimse: DimseSettings, policy: AccessPolicy) -> None:
        self.dimse = dimse
        self.policy = policy
        self._admitted: dict[int, Any] = {}  # id(assoc) -> assoc
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple[Any, Any]]:
        """The pynetdicom handlers that run the gate."""
        ended = self.on_ended
        return [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_RELEASED, ended),
                (evt.EVT_ABORTED, ended), (evt.EVT_REJECTED, ended),
                (evt.EVT_CONN_CLOSE, ended)]

    @property
    def admitted(self) -> int:
        """Associations admitted and still running."""
        with self._lock:
            return len(self._live())

    def on_requested(self, event: Any) -> None:
        """EVT_REQUESTED: rejects the request, or admits it and lifts the short timeouts."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        address = str(assoc.requestor.address)
        try:
            refusal = self._check(assoc, calling, called, address)
        except Exception:  # pynetdicom would swallow it and accept: refuse instead
            log.exception("association from %s (calling %r): admission check failed",
                          address, calling)
            refusal = (NO_REASON_TRANSIENT, "admission check failed")
        if refusal is None:
            self._settle(assoc)
            log.debug("association from %s (calling %r) admitted", address, calling)
            return
        reject, reason = refusal
        log.warning("refused an association from %s (calling AE %r, called AE %r): %s",
                    address, calling, called, reason)
        assoc.acse.send_reject(*reject)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def on_ended(self, event: Any) -> None:
        """An association released, aborted, rejected or disconnected: its place is free."""
        with self._lock:
            self._admitted.pop(id(event.assoc), None)

    def _check(self, assoc: Any, calling: str, called: str,
               address: str) -> tuple[Reject, str] | None:
        if called != self.dimse.ae_title:
            return CALLED_AE_NOT_RECOGNISED, f"called AE title is not {self.dimse.ae_title!r}"
        certificate = client_certificate(getattr(assoc.dul.socket, "socket", None))
        try:
            self.policy.admit(calling, address, certificate)
        except CallerRefusedError as exc:
            return CALLING_AE_NOT_RECOGNISED, exc.reason.value
        with self._lock:
            live = self._live()
            if len(live) >= self.dimse.max_associations:
                return LOCAL_LIMIT_EXCEEDED, (f"{len(live)} associations already established "
                                              "(dimse.max_associations)")
            self._admitted[id(assoc)] = assoc
        return None

    def _live(self) -> list[Any]:
        # An association whose thread ended without a release or abort event still frees
        # its place (a lost event must not shrink the node's capacity for good).
        for key in [k for k, a in self._admitted.items() if not a.is_alive()]:
            del self._admitted[key]
        return list(self._admitted.values())

    def _settle(self, assoc: Any) -> None:
        """An admitted association gets the ordinary timeouts instead of the short wait
        for its request: ACSE answers within ACSE_TIMEOUT, and no single read or write
        stalls for longer than ``network_timeout`` (a peer stopping mid-PDU is dropped)."""
        assoc.acse_timeout = ACSE_TIMEOUT
        sock = getattr(assoc.dul.socket, "socket", None)
        if sock is not None:
            try:
                sock.settimeout(self.dimse.network_timeout or None)  # 0: no limit
            except OSError:
                pass  # already closed: the association ends on its own
