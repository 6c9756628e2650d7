"""Logging set-up for the CLI and the service. Log lines carry UIDs, never PHI or secrets."""

from __future__ import annotations

import logging
import re
import sys

# A quoted value in a message ('Smith^Alice', "123"): what libraries echo of bad input.
_QUOTED = re.compile(r"""(['"])(?:(?!\1).)*\1""")


class RedactQuoted(logging.Filter):
    """Replaces every quoted value in a record's message by '…' (warnings from pydicom
    and others quote the offending element value verbatim: names, IDs, birth dates)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _QUOTED.sub("'…'", record.getMessage())
        record.args = None
        return True


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
    # pydicom logs invalid element values verbatim (names, IDs): keep it quiet (after its
    # import, which sets the level of its logger).
    import pydicom  # noqa: F401

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    # Python warnings (pydicom's "Invalid value for VR UI: '<value>'") went straight to
    # stderr, around the log: into the log instead, values redacted.
    logging.captureWarnings(True)
    warnings_log = logging.getLogger("py.warnings")
    if not any(isinstance(f, RedactQuoted) for f in warnings_log.filters):
        warnings_log.addFilter(RedactQuoted())
    # highdicom: ~18 INFO lines per SEG it writes or reads.
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "asyncio",
                  "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
