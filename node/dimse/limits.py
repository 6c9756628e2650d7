"""How many connections one address may hold at once (``max_connections_per_address``).

Counted per receiving process, over the plain and the TLS listener together, from the
moment a connection is accepted until it is closed, whether or not it ever becomes an
association.
"""

from __future__ import annotations

import threading
from collections import Counter


class ConnectionLimit:
    """Open connections per IP address, at most ``per_address`` each."""

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, address: str) -> bool:
        """Counts a new connection from ``address``; False (not counted) when it already
        holds ``per_address``."""
        with self._lock:
            if self._open[address] >= self.per_address:
                return False
            self._open[address] += 1
            return True

    def give_back(self, address: str) -> None:
        """A connection counted by :meth:`take` is closed."""
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]

    def open_from(self, address: str) -> int:
        with self._lock:
            return self._open[address]
