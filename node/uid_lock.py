"""One receipt at a time per SOP Instance UID, across threads, processes and nodes.

Ingest checks the index for the UID, writes the objects under the UID's path, then indexes
them. Two receipts of one UID with different bytes must not interleave there: both would
write the same path, the index would keep one hash while the object held the other's
bytes, and one sender's success would be a lie. So a receipt holds its UID from the check
to the commit:

* threads of one process: a striped ``threading.Lock``;
* processes sharing a home (``serve`` with several receivers, ``import`` beside it): a
  striped ``flock`` on files under ``HOME/run/uid-locks`` (released by the kernel if a
  process dies);
* nodes sharing one PostgreSQL index (scale-out): a session advisory lock on the UID's
  stripe, held on a connection of its own.

Stripes (a stable hash of the UID, 256 of them) keep the lock files and locks few; two
UIDs on one stripe merely wait for each other.
"""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

STRIPES = 256
_PG_KEY_BASE = 0x534E0000  # "SN": keeps the node's advisory keys apart from others'


class UidLocks:
    """Striped locks on UIDs (see the module docstring)."""

    def __init__(self, folder: Path | None, engine: Any | None = None) -> None:
        self.folder = folder
        self.engine = engine if engine is not None and engine.dialect.name == "postgresql" \
            else None
        self._threads = [threading.Lock() for _ in range(STRIPES)]
        if folder is not None:
            for part in (*reversed(folder.parents[:2]), folder):  # HOME/run, its locks: 0700
                part.mkdir(exist_ok=True, mode=0o700)

    @contextmanager
    def hold(self, uid: str) -> Iterator[None]:
        stripe = zlib.crc32(uid.encode()) % STRIPES
        with self._threads[stripe]:
            # Opened for each hold and closed after it: a lock file held open per stripe
            # would keep up to 256 descriptors per node open for ever (and push sockets
            # past select()'s limit in a process that opens many nodes).
            fd = (os.open(self.folder / f"{stripe:03d}.lock", os.O_CREAT | os.O_RDWR, 0o600)
                  if self.folder is not None else None)
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                if self.engine is None:
                    yield
                else:
                    with self.engine.connect() as conn:
                        conn.execute(select(func.pg_advisory_lock(_PG_KEY_BASE + stripe)))
                        try:
                            yield
                        finally:
                            conn.execute(select(func.pg_advisory_unlock(_PG_KEY_BASE + stripe)))
                            conn.commit()
            finally:
                if fd is not None:
                    os.close(fd)  # releases the flock

    def close(self) -> None:
        """Nothing is held between holds; kept for symmetry with the other parts."""
