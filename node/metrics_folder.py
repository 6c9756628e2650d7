"""Where the node's processes put their metrics (prometheus-client's multiprocess mode).

Apart from ``node.metrics`` because it must run before prometheus_client is imported.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_folder() -> None:
    """Switches this process and the processes it starts to multiprocess metrics, in a fresh
    folder removed when this process exits. Does nothing when a folder is set already."""
    if os.environ.get(MULTIPROC_ENV):
        return
    folder = tempfile.mkdtemp(prefix="support-node-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
