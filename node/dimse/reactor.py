"""Sending a request on an association that pynetdicom serves, from another thread.

pynetdicom serves an accepted association with one thread, its *reactor*, which takes every
decoded DIMSE message off the association's queue. Its own ``send_*`` methods pause that
reactor with a flag that is also set while a request is being served and is read without a
lock, so a request sent from another thread can overtake the response the reactor is still
writing, and the peer's answer can be taken by the reactor instead of the sender (seen as
30 s stalls and a hang with Storage Commitment reports).

This module parks the reactor for certain: ``install`` replaces the reactor's checkpoint by
a ``Checkpoint`` that says when the reactor is *blocked* in it (at the top of its loop, so
whatever it was serving has been answered); ``send_event_report`` parks it, sends an
N-EVENT-REPORT, takes the answer off the queue itself and lets the reactor go. It gives up,
without aborting anything, when the peer asks to release or abort first, or does not answer
in time: the caller then reports another way.
"""

from __future__ import annotations

import itertools
import threading
import time
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE

_POLL = 0.02
_message_ids = itertools.count(0x7000)  # apart from the low numbers peers count from


class Checkpoint:
    """A drop-in for the reactor's ``threading.Event`` that knows when it is parked."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = True
        self._parked = False
        self.owner = threading.Lock()  # one sender at a time parks and speaks

    def set(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._open = False

    def is_set(self) -> bool:
        return self._open

    def wait(self, timeout: float | None = None) -> bool:
        """Called by the reactor only: blocks while closed, saying so."""
        with self._cond:
            while not self._open:
                self._parked = True
                self._cond.notify_all()
                if not self._cond.wait(timeout) and timeout is not None:
                    break
            self._parked = False
            return self._open

    def park(self, alive: Any, timeout: float) -> bool:
        """Closes the checkpoint and waits until the reactor is blocked in it.

        ``alive()`` is asked between polls; False (the association ended) or the timeout
        reopens the checkpoint and returns False."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._parked:
                # Closed again on every poll: pynetdicom's own send_* (a C-GET's
                # sub-operations, on the reactor's thread) reopen it when they finish.
                self._open = False
                if not alive() or time.monotonic() > deadline:
                    self._open = True
                    self._cond.notify_all()
                    return False
                self._cond.wait(_POLL)
            self._open = False
        return True


def install(assoc: Any) -> Checkpoint:
    """Gives ``assoc``'s reactor a ``Checkpoint`` (call on the reactor's own thread, from
    an event handler, while the reactor is serving a request and not waiting in it)."""
    current = assoc._reactor_checkpoint  # noqa: SLF001 - the seam pynetdicom pauses with
    if isinstance(current, Checkpoint):
        return current
    checkpoint = Checkpoint()
    if not current.is_set():
        checkpoint.clear()
    assoc._reactor_checkpoint = checkpoint  # noqa: SLF001
    return checkpoint


def _peer_leaving(assoc: Any) -> bool:
    """The peer asked to release or abort (seen without taking it off the queue)."""
    head = assoc.dul.peek_next_pdu()
    if isinstance(head, (A_ABORT, A_P_ABORT)):
        return True
    return isinstance(head, A_RELEASE) and head.result is None


def _take_answer(assoc: Any, message_id: int) -> Any:
    """The peer's N-EVENT-REPORT response to ``message_id`` if it has arrived, else None."""
    q = assoc.dimse.msg_queue
    with q.mutex:
        for item in q.queue:
            _, msg = item
            if (isinstance(msg, N_EVENT_REPORT)
                    and msg.MessageIDBeingRespondedTo == message_id):
                q.queue.remove(item)
                return msg
    return None


def send_event_report(assoc: Any, checkpoint: Checkpoint, data: Dataset, event_type: int,
                      sop_class: str, sop_instance: str, timeout: float) -> int | None:
    """Sends an N-EVENT-REPORT on ``assoc`` and returns the peer's status, or None when it
    was not sent or not answered (association gone, peer releasing, ``timeout`` passed)."""

    def alive() -> bool:
        return bool(assoc.is_established) and not _peer_leaving(assoc)

    with checkpoint.owner:
        return _send_parked(assoc, checkpoint, data, event_type, sop_class, sop_instance,
                            timeout, alive)


def _send_parked(assoc: Any, checkpoint: Checkpoint, data: Dataset, event_type: int,
                 sop_class: str, sop_instance: str, timeout: float,
                 alive: Any) -> int | None:
    if not alive() or not checkpoint.park(alive, timeout):
        return None
    try:
        if not alive():
            return None
        context = assoc._get_valid_context(sop_class, "", None)  # noqa: SLF001
        syntax = context.transfer_syntax[0]
        req = N_EVENT_REPORT()
        req.MessageID = message_id = next(_message_ids) % 0x10000 or 1
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = sop_instance
        req.EventTypeID = event_type
        encoded = encode(data, syntax.is_implicit_VR, syntax.is_little_endian,
                         syntax.is_deflated)
        if encoded is None:
            raise ValueError("the report does not encode in the accepted transfer syntax")
        req.EventInformation = BytesIO(encoded)
        assoc.dimse.send_msg(req, context.context_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = _take_answer(assoc, message_id)
            if answer is not None:
                return int(answer.Status)
            if not alive() or not assoc.dul.is_alive():
                return None
            time.sleep(_POLL)
        return None
    finally:
        checkpoint.set()
