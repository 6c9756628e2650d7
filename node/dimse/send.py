"""C-STORE SCU: the DIMSE side of "send to PACS" (``node.sending.Sender``).

Instances are read ahead of the association and sent as stored, as C-MOVE does
(node.dimse.readahead, node.dimse.encoded)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pynetdicom import AE, evt

from node.dimse.encoded import StoreSender, association_gone
from node.dimse.qr import _contexts, _tls_context, load_original
from node.dimse.readahead import ReadAhead
from node.dimse.transport import tune_connection
from node.index.query import InstanceRef
from node.sending import DestinationUnavailableError, SendReport, UnknownDestinationError
from node.settings import Settings

log = logging.getLogger("support_node.dimse")


class DimseSender:
    """Sends stored originals, as stored, over one association per call."""

    def __init__(self, settings: Settings, fs: Any) -> None:
        self.settings = settings
        self.fs = fs

    def __call__(self, destination: str, refs: Sequence[InstanceRef]) -> SendReport:
        dest = self.settings.destination(destination)
        if dest is None:
            raise UnknownDestinationError(f"no destination called {destination!r} in "
                                          "[destinations]")
        ae = AE(ae_title=self.settings.dimse.ae_title)
        ae.requested_contexts = _contexts(list(refs))
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        options: dict[str, Any] = {"evt_handlers": [(evt.EVT_CONN_OPEN, tune_connection)]}
        if dest.tls:
            options["tls_args"] = (_tls_context(dest), dest.host)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, **options)
        if not assoc.is_established:
            raise DestinationUnavailableError(f"{dest.ae_title} at {dest.host}:{dest.port} "
                                              "did not accept an association")
        sender = StoreSender(assoc, hold_reactor=True).install()
        try:
            sent, failed = self._send_all(assoc, list(refs), dest.ae_title)
        finally:
            sender.uninstall()
            assoc.release()
        log.info("sent %d instances to %s (%d failed)", sent, dest.ae_title, failed)
        return SendReport(dest.ae_title, sent, failed)

    def _send_all(self, assoc: Any, refs: list[InstanceRef], title: str) -> tuple[int, int]:
        """(sent, failed): each instance read ahead of the association (node.dimse.readahead),
        sent as stored; one that cannot be read or is refused counts as failed."""
        sent = failed = 0
        with ReadAhead(refs, lambda ref: load_original(self.fs, ref),
                       should_stop=lambda: association_gone(assoc)) as ahead:
            for fetched in ahead:
                if fetched.error is not None:
                    log.error("send %s: cannot read it: %s", fetched.ref.sop_uid,
                              type(fetched.error).__name__)
                    failed += 1
                    continue
                try:
                    status = assoc.send_c_store(fetched.value)
                except (ValueError, RuntimeError, AttributeError) as exc:
                    log.warning("send %s to %s failed: %s", fetched.ref.sop_uid, title,
                                type(exc).__name__)
                    failed += 1
                    continue
                if status and int(status.Status) in _SENT:
                    sent += 1
                else:
                    failed += 1
        failed += len(refs) - sent - failed  # not tried: the association went away
        return sent, failed


_SENT = (0x0000, 0xB000, 0xB007, 0xB006)  # success, or stored with a warning

