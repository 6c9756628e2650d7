"""The typed seam between the index's modules and the catalog that runs their SQL.

Modules that keep rows of their own (jobs, versions, tokens) need only to run a function in
a write transaction or a read, with the catalog's retries and error translation; they take a
:class:`Transactions` instead of the Catalog class, so that they do not import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from sqlalchemy import Connection

T = TypeVar("T")


class Transactions(Protocol):
    def transaction(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` in one write transaction (retried on a lost race); raises
        CatalogError naming ``what``."""
        ...

    def reading(self, what: str, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` in a read; raises CatalogError naming ``what``."""
        ...
