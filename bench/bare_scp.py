"""A bare pynetdicom Storage SCP that discards what it receives: the ceiling for a pynetdicom node.

    python bench/bare_scp.py PORT [--max-pdu N] [--tuned] --count-file FILE

Listens on 127.0.0.1:PORT, answers C-ECHO and every storage SOP class (pynetdicom's default
transfer syntaxes), returns 0x0000 without decoding or keeping anything. ``--max-pdu`` sets the
maximum PDU it offers (default: pynetdicom's 16382); ``--tuned`` installs the node's own
transport tuning (TCP_NODELAY, TCP_QUICKACK, whole-PDU reads) so that the only difference left
between this and the node is the ingest work. On SIGTERM it stops and writes how many instances
it acknowledged to ``--count-file``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--max-pdu", type=int, default=None)
    parser.add_argument("--tuned", action="store_true")
    parser.add_argument("--count-file", type=Path, required=True)
    args = parser.parse_args()

    ae = AE(ae_title="BARE")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    if args.max_pdu is not None:
        ae.maximum_pdu_size = args.max_pdu
    count = 0
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        nonlocal count
        with lock:
            count += 1
        return 0x0000

    handlers: list[Any] = [(evt.EVT_C_STORE, on_store)]
    if args.tuned:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from node.dimse.transport import tune_connection

        handlers.insert(0, (evt.EVT_CONN_OPEN, tune_connection))
    server = ae.start_server(("127.0.0.1", args.port), block=False, evt_handlers=handlers)
    assert server is not None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.2):
        pass
    server.shutdown()
    args.count_file.write_text(f"{count}\n")


if __name__ == "__main__":
    main()
