"""C-STORE of stored originals as they are: no decode, no re-encode, a prompt association.

pynetdicom's ``Association.send_c_store`` takes a Dataset and encodes it again (a retrieve
first parses the stored bytes for it: ~0.7 ms at 512×512), and its polling makes each
sub-operation wait for threads that sleep 1 ms at a time: the association's reactor, which
must be paused before every request (and which, once the reply comes in under its 1 ms,
can take the C-STORE response off the queue before the sender does: pynetdicom then waits
out its DIMSE timeout), and the DUL thread that reads the reply. Measured: 6.6 ms per
512×512 sub-operation against storescu's 0.8 ms.

:class:`StoredDataset` carries the stored Part-10 bytes: a Dataset with only the SOP Class
and Instance UIDs and the file meta (so pynetdicom's C-MOVE/C-GET handlers take it as a data
set and count its failures), plus the encoded data set exactly as stored.

:class:`StoreSender` stands in for ``send_c_store`` on one association while a retrieve runs
(``install``/``uninstall``): a StoredDataset whose syntax the peer accepted goes out as its
stored bytes; anything else (a plain Dataset, a syntax the peer took only in another
uncompressed syntax) goes through pynetdicom's own ``send_c_store``, decoded. With
``hold_reactor`` the association's reactor stays paused from one C-STORE to the next (the
C-MOVE sub-association: nothing else happens on it) instead of being paused and woken for
each, and is woken again on ``uninstall``, on any failure, and by pynetdicom's ``release``.
While installed the DUL thread polls every ``loop_delay`` seconds instead of every 1 ms.

This leans on pynetdicom 3.0 internals (``_reactor_checkpoint``, ``_is_paused``,
``_get_valid_context``, ``_check_received_status``, ``dul._run_loop_delay``); the version is
pinned below 3.1 and tests/test_retrieve_readahead.py sends through it.
"""

from __future__ import annotations

import io
import queue
import socket
import ssl
import time
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

LOOP_DELAY = 0.0002  # DUL polling while a retrieve runs (pynetdicom's default: 0.001)
_WAIT_STEP = 0.25  # how often a wait for a response looks for an abort


class StoredDataset(Dataset):
    """A stored original for C-STORE: SOP Class/Instance UIDs, file meta and ``encoded``, the
    data set bytes as stored (after the file meta).

    pydicom cannot write it (``keys`` raises TypeError: pynetdicom then fails the
    sub-operation rather than send a data set of two elements); :meth:`decoded` parses it.
    """

    def __init__(self, data: bytes, offset: int, file_meta: FileMetaDataset,
                 sop_class_uid: str, sop_instance_uid: str) -> None:
        super().__init__()
        self.file_meta = file_meta
        self.SOPClassUID = UID(sop_class_uid)
        self.SOPInstanceUID = UID(sop_instance_uid)
        self._stored = data
        self._offset = offset

    @classmethod
    def parse(cls, data: bytes, sop_class_uid: str,
              sop_instance_uid: str) -> StoredDataset | None:
        """The stored Part-10 bytes ``data`` (the preamble may be missing), reading only the
        file meta; None when they have no Transfer Syntax UID in a file meta."""
        fp = io.BytesIO(data)
        read_preamble(fp, True)
        meta = FileMetaDataset(read_dataset(fp, False, True, stop_when=_past_meta))
        if "TransferSyntaxUID" not in meta:
            return None
        return cls(data, fp.tell(), meta, sop_class_uid, sop_instance_uid)

    @property
    def transfer_syntax(self) -> UID:
        return UID(self.file_meta.TransferSyntaxUID)

    @property
    def encoded(self) -> bytes:
        """The data set's bytes as stored, in :attr:`transfer_syntax`."""
        return self._stored[self._offset:]

    def decoded(self) -> Dataset:
        """The whole stored instance, parsed (pydicom)."""
        return pydicom.dcmread(io.BytesIO(self._stored), force=True)

    def keys(self) -> Any:
        raise TypeError("a StoredDataset is sent as stored (node.dimse.encoded), "
                        "never encoded again")


class UnreadableInstance(Dataset):
    """A C-STORE sub-operation that must fail: the stored instance could not be read.

    Handed to pynetdicom's C-MOVE/C-GET loop as a data set (not as a bare failure), so that
    the loop counts it as it counts any failed sub-operation: one fewer remaining, and its
    SOP Instance UID in the final response's Failed SOP Instance UID List (PS3.4 C.4.2.3.1).
    Sending it raises; pydicom cannot write it either (``keys`` raises TypeError).
    """

    def __init__(self, sop_class_uid: str, sop_instance_uid: str) -> None:
        super().__init__()
        self.SOPClassUID = UID(sop_class_uid)
        self.SOPInstanceUID = UID(sop_instance_uid)

    def keys(self) -> Any:
        raise TypeError("an unreadable instance is never sent")


def _past_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 2


def association_gone(assoc: Any) -> bool:
    """Whether ``assoc`` was aborted or lost its connection, seen from any thread (its
    ``is_established`` turns False only once its reactor gets to look)."""
    return (not assoc.is_established or bool(assoc.acse.is_aborted())
            or not assoc.dul.is_alive())


class StoreSender:
    """``send_c_store`` for one association while a retrieve runs (see the module)."""

    def __init__(self, assoc: Any, hold_reactor: bool, loop_delay: float = LOOP_DELAY) -> None:
        self.assoc = assoc
        self.hold_reactor = hold_reactor
        self.loop_delay = loop_delay
        self._held = False
        self._installed = False
        self._delay = 0.0

    def install(self) -> StoreSender:
        """Stands in for ``assoc.send_c_store`` until :meth:`uninstall`."""
        if not self._installed:
            self._delay = self.assoc.dul._run_loop_delay  # noqa: SLF001
            self.assoc.dul._run_loop_delay = self.loop_delay  # noqa: SLF001
            self.assoc.send_c_store = self.send
            self._installed = True
        return self

    def uninstall(self) -> None:
        """Gives ``send_c_store`` back to pynetdicom and wakes the reactor if it was held."""
        self._resume()
        if self._installed:
            self._installed = False
            if vars(self.assoc).get("send_c_store") == self.send:  # not a later sender's
                del self.assoc.send_c_store
                self.assoc.dul._run_loop_delay = self._delay  # noqa: SLF001

    def send(self, dataset: Any, msg_id: int = 1, priority: int = 2,
             originator_aet: str | None = None, originator_id: int | None = None) -> Dataset:
        """As pynetdicom's ``send_c_store``: the response's status data set (empty when none
        came). Raises RuntimeError (no association), ValueError (no context: pynetdicom's)."""
        if isinstance(dataset, UnreadableInstance):
            raise RuntimeError("the stored instance could not be read")  # one failed
        stock = type(self.assoc).send_c_store
        if not isinstance(dataset, StoredDataset):
            self._resume()
            return stock(self.assoc, dataset, msg_id, priority, originator_aet, originator_id)
        try:
            context = self.assoc._get_valid_context(  # noqa: SLF001
                dataset.SOPClassUID, dataset.transfer_syntax, "scu", allow_conversion=False)
        except ValueError:  # the peer took this class in another syntax only: convert
            self._resume()
            return stock(self.assoc, dataset.decoded(), msg_id, priority, originator_aet,
                         originator_id)
        if not self.assoc.is_established:
            raise RuntimeError("the association is not established")
        if self._gone():
            self._resume()  # the reactor sees the abort and ends the association
            raise RuntimeError("the association was aborted")
        req = C_STORE()
        req.MessageID = msg_id
        req.Priority = priority
        req.MoveOriginatorApplicationEntityTitle = originator_aet
        req.MoveOriginatorMessageID = originator_id
        req.AffectedSOPClassUID = dataset.SOPClassUID
        req.AffectedSOPInstanceUID = dataset.SOPInstanceUID
        req.DataSet = io.BytesIO(dataset.encoded)
        self._pause()
        try:
            if not self._write(req, context.context_id):
                self.assoc.dimse.send_msg(req, context.context_id)
            rsp = self._response()
        except BaseException:
            self._resume()
            raise
        if rsp is None:
            self._resume()
            self.assoc._handle_no_response()  # noqa: SLF001
            return Dataset()
        if not self.hold_reactor:
            self._resume()
        return self.assoc._check_received_status(rsp)  # noqa: SLF001

    def _write(self, req: C_STORE, context_id: int) -> bool:
        """Writes the request's P-DATA-TF PDUs to the socket from this thread, as the DUL
        thread would one PDU per loop turn; only with the reactor held, on a plain TCP
        connection in data transfer with nothing queued for the DUL (so nothing else can be
        written between them). False: not now, send through the DUL."""
        dul = self.assoc.dul
        sock = getattr(dul.socket, "socket", None)
        if (not self.hold_reactor or not isinstance(sock, socket.socket)
                or isinstance(sock, ssl.SSLSocket) or not dul.to_provider_queue.empty()
                or not dul.event_queue.empty() or dul.state_machine.current_state != "Sta6"):
            return False
        msg = C_STORE_RQ()
        msg.primitive_to_message(req)
        msg.context_id = context_id
        evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": msg})
        pdus = msg.encode_msg(context_id, self.assoc.dimse.maximum_pdu_size)
        try:
            sock.sendall(b"".join(P_DATA_TF(pdata).encode() for pdata in pdus))
        except OSError as exc:  # the connection is gone: the DUL sees it too
            raise RuntimeError(f"cannot write to the association: {exc}") from exc
        return True

    def _pause(self) -> None:
        """Pauses the reactor (as pynetdicom does before each request) unless it is held."""
        if self._held:
            return
        self.assoc._reactor_checkpoint.clear()  # noqa: SLF001
        while not self.assoc._is_paused:  # noqa: SLF001
            time.sleep(0.0001)
        self._held = True

    def _resume(self) -> None:
        if self._held:
            self._held = False
            self.assoc._reactor_checkpoint.set()  # noqa: SLF001

    def _gone(self) -> bool:
        return association_gone(self.assoc)

    def _response(self) -> Any:
        """The next DIMSE message, or None after the DIMSE timeout or once the association
        is aborted (pynetdicom's own wait sees an abort only at its timeout)."""
        timeout = self.assoc.dimse.dimse_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _WAIT_STEP if deadline is None else min(
                _WAIT_STEP, max(0.0, deadline - time.monotonic()))
            try:
                return self.assoc.dimse.msg_queue.get(block=True, timeout=step)[1]
            except queue.Empty:
                if self._gone() or (deadline is not None and time.monotonic() >= deadline):
                    return None


__all__ = ["LOOP_DELAY", "StoreSender", "StoredDataset", "UnreadableInstance",
           "association_gone"]
