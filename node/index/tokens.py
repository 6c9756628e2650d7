"""Web API tokens in the index: created, listed, revoked; looked up by a hash of the secret.

A token's secret is shown once, when it is created, and never stored: the index keeps its
SHA-256 (a token is 256 random bits, so a fast hash suffices; no salt or stretching needed).
Revoked tokens stay listed, marked, so that an audit can name them.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, insert, select, update

from node.access import TokenGrant, TokenScope
from node.errors import ConfigError
from node.index import schema as s
from node.index.transactions import Transactions

PREFIX = "snt_"


@dataclass(frozen=True)
class TokenInfo:
    """One token as listed (never its secret)."""

    name: str
    hospital: str | None
    scope: str
    created_at: datetime
    revoked_at: datetime | None
    pseudonymous: bool = False


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class Tokens:
    """The tokens of one index."""

    def __init__(self, index: Transactions) -> None:
        self.index = index

    def create(self, name: str, hospital: str | None, scope: TokenScope,
               pseudonymous: bool = False) -> str:
        """Creates a token and returns its secret (the only time it is seen).

        A ``pseudonymous`` token sees patients by their pseudonym only.

        Raises:
            ConfigError: a token called ``name`` exists already.
            CatalogError: the index failed.
        """
        secret = PREFIX + secrets.token_urlsafe(32)

        def work(conn: Connection) -> bool:
            if conn.scalar(select(s.tokens.c.pk).where(s.tokens.c.name == name)) is not None:
                return False
            conn.execute(insert(s.tokens).values(
                name=name, secret_sha256=_digest(secret), hospital=hospital,
                scope=scope.value, created_at=datetime.now(UTC), pseudonymous=pseudonymous))
            return True

        if not self.index.transaction("creating a token", work):
            raise ConfigError(f"a token called {name!r} exists already")
        return secret

    def revoke(self, name: str) -> bool:
        """Revokes the token called ``name``; False when there is no such active token."""
        def work(conn: Connection) -> bool:
            done = conn.execute(update(s.tokens)
                                .where(s.tokens.c.name == name, s.tokens.c.revoked_at.is_(None))
                                .values(revoked_at=datetime.now(UTC)))
            return bool(done.rowcount)

        return self.index.transaction("revoking a token", work)

    def list(self) -> list[TokenInfo]:
        def read(conn: Connection) -> list[TokenInfo]:
            rows = conn.execute(select(s.tokens.c.name, s.tokens.c.hospital, s.tokens.c.scope,
                                       s.tokens.c.created_at, s.tokens.c.revoked_at,
                                       s.tokens.c.pseudonymous)
                                .order_by(s.tokens.c.name))
            return [TokenInfo(*row[:5], bool(row[5])) for row in rows]

        return self.index.reading("listing tokens", read)

    def any_active(self) -> bool:
        def read(conn: Connection) -> bool:
            return conn.scalar(select(s.tokens.c.pk).where(s.tokens.c.revoked_at.is_(None))
                               .limit(1)) is not None

        return self.index.reading("looking for tokens", read)

    def grant_for(self, secret: str) -> TokenGrant | None:
        """Returns what the active token with ``secret`` grants, None if there is none."""
        digest = _digest(secret)

        def read(conn: Connection) -> TokenGrant | None:
            row = conn.execute(select(s.tokens.c.name, s.tokens.c.hospital, s.tokens.c.scope,
                                      s.tokens.c.pseudonymous)
                               .where(s.tokens.c.secret_sha256 == digest,
                                      s.tokens.c.revoked_at.is_(None))).first()
            return None if row is None else TokenGrant(row[0], row[1], TokenScope(row[2]),
                                                       bool(row[3]))

        return self.index.reading("checking a token", read)
