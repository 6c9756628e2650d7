"""Logging set-up for the CLI and the service. Log lines carry UIDs, never PHI or secrets."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO") -> None:
    """Plain timestamped lines on stderr; pynetdicom kept quiet (its DEBUG dumps headers)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom's INFO/DEBUG output includes data set summaries (patient names): never.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # pydicom logs invalid element values verbatim (names, IDs): keep it quiet.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    # highdicom: ~18 INFO lines per SEG it writes or reads.
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "asyncio",
                  "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
