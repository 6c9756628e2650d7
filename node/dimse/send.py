"""C-STORE SCU: the DIMSE side of "send to PACS" (``node.sending.Sender``)."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import pydicom
from pynetdicom import AE, evt

from node.dimse.qr import _contexts, _tls_context
from node.dimse.transport import tune_connection
from node.index.query import InstanceRef
from node.layout import ORIGINAL
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
        sent = failed = 0
        try:
            for ref in refs:
                data = self.fs.cat_file(f"{ref.object_key}/{ORIGINAL}")
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
                try:
                    status = assoc.send_c_store(ds)
                except (ValueError, RuntimeError, AttributeError) as exc:
                    log.warning("send %s to %s failed: %s", ref.sop_uid, dest.ae_title,
                                type(exc).__name__)
                    failed += 1
                    continue
                if status and int(status.Status) in (0x0000, 0xB000, 0xB007, 0xB006):
                    sent += 1
                else:
                    failed += 1
        finally:
            assoc.release()
        log.info("sent %d instances to %s (%d failed)", sent, dest.ae_title, failed)
        return SendReport(dest.ae_title, sent, failed)
