"""Who may do what: one access policy for every protocol.

A caller is a calling AE title (DIMSE) or a web token (HTTP). Either maps to an
:class:`Access`: the hospital its stores go to, whether it may store, query and retrieve,
and the hospitals it sees (its own only, or all). The edges ask here and translate a
refusal into their own protocol (DIMSE: refused / 0x0124; HTTP: 401 / 403).

Rules:

* DIMSE: a listed caller (``[dimse.callers.NAME]``) stores into its hospital and sees that
  hospital only, with the rights listed; it is admitted only from its ``hosts`` and, when
  bound to a certificate, only over TLS with that client certificate. With ``allow_any_ae``,
  unlisted callers are admitted with ``any_ae_rights`` (default: store into ``default``;
  query and retrieve, when granted, see ``default`` only). A node listening on loopback
  with no list at all admits anyone on this machine with every right over every hospital.
  Echo needs no right: every admitted caller may echo.
* Web: once any token exists, every request needs one; a token is scoped to one hospital
  (it sees and stores there only) or to all (stores go to ``default``), with a scope of
  ``read`` (query, retrieve), ``write`` (store), ``readwrite`` or ``admin`` (all of it).
  A pseudonymous token sees patients by their pseudonym only (no names, IDs, birth dates).
  With no token defined, anonymous callers get what a loopback DIMSE caller gets, where the
  HTTP edge allows anonymous access (loopback, or ``[http] allow_anonymous``).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Protocol

from node.errors import NodeError
from node.settings import Caller, DimseSettings, IPNetwork

DEFAULT_HOSPITAL = "default"


class Right(enum.Enum):
    STORE = "store"
    QUERY = "query"
    RETRIEVE = "retrieve"


class NotAuthenticatedError(NodeError):
    """No credentials, or credentials the node does not know (HTTP 401)."""


class NotAllowedError(NodeError):
    """The caller is known but may not do this (DIMSE refused, HTTP 403)."""


class Refusal(enum.Enum):
    """Why a DIMSE caller is not admitted (the edge picks the A-ASSOCIATE-RJ reason)."""

    UNKNOWN_CALLER = "calling AE title is not on the allow-list"
    WRONG_ADDRESS = "calling AE title is not allowed from this address"
    NO_CERTIFICATE = "calling AE title needs its client certificate over TLS"
    WRONG_CERTIFICATE = "client certificate does not match the calling AE title"


class CallerRefusedError(NotAllowedError):
    """A DIMSE caller is not admitted; ``reason`` says why (never a secret)."""

    def __init__(self, reason: Refusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True)
class ClientCertificate:
    """A verified TLS client certificate: its subject common name and the SHA-256 of its
    DER encoding (lower-case hex)."""

    common_name: str
    sha256: str


@dataclass(frozen=True)
class Access:
    """What one caller may do.

    Attributes:
        name: the AE title or token name (for logs and receipts; never a secret).
        hospital: where its stores go; None when it may not store.
        query / retrieve: whether it may query and retrieve.
        hospitals: the hospitals it sees; None for every hospital.
        identified: whether it sees patients' names and IDs; False for a pseudonymous
            caller, who sees the patient's pseudonym instead (see node/pseudonym.py).
    """

    name: str
    hospital: str | None
    query: bool
    retrieve: bool
    hospitals: tuple[str, ...] | None
    identified: bool = True

    def allows(self, right: Right) -> bool:
        if right is Right.STORE:
            return self.hospital is not None
        return self.query if right is Right.QUERY else self.retrieve

    def require(self, right: Right) -> None:
        """Raises NotAllowedError unless the caller has ``right``."""
        if not self.allows(right):
            raise NotAllowedError(f"{self.name or 'this caller'} may not {right.value}")

    def sees(self, hospital: str) -> bool:
        return self.hospitals is None or hospital in self.hospitals


NOBODY = Access("", None, False, False, ())


class TokenScope(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"
    ADMIN = "admin"


@dataclass(frozen=True)
class TokenGrant:
    """A token as the index knows it (never the secret)."""

    name: str
    hospital: str | None
    scope: TokenScope
    pseudonymous: bool = False


class TokenLookup(Protocol):
    def any_active(self) -> bool: ...
    def grant_for(self, secret: str) -> TokenGrant | None: ...


class AccessPolicy:
    """Maps callers to what they may do (see the module docstring for the rules)."""

    def __init__(self, dimse: DimseSettings, tokens: TokenLookup | None = None,
                 anonymous_web: bool = True) -> None:
        self.dimse = dimse
        self.tokens = tokens
        self.anonymous_web = anonymous_web

    def admit(self, ae_title: str, address: str,
              certificate: ClientCertificate | None = None) -> Access:
        """What the caller of a new association may do, checked against its bindings.

        ``address``: the peer's IP address; ``certificate``: its verified TLS client
        certificate (None over plain TCP, or when it gave none).
        Raises CallerRefusedError with the reason.
        """
        title = ae_title.strip()
        caller = self._listed(title)
        if caller is None:
            if not self.dimse.accepts_any_caller:
                raise CallerRefusedError(Refusal.UNKNOWN_CALLER)
            return self.for_ae(title)
        if caller.hosts and not _within(address, caller.hosts):
            raise CallerRefusedError(Refusal.WRONG_ADDRESS)
        if caller.needs_certificate:
            if certificate is None:
                raise CallerRefusedError(Refusal.NO_CERTIFICATE)
            if ((caller.cert_cn and certificate.common_name != caller.cert_cn)
                    or (caller.cert_sha256 and certificate.sha256 != caller.cert_sha256)):
                raise CallerRefusedError(Refusal.WRONG_CERTIFICATE)
        return self.for_ae(title)

    def for_ae(self, ae_title: str) -> Access:
        """What a calling AE title may do once admitted (NOBODY when it is not accepted).

        Bindings (address, certificate) are checked once, by :meth:`admit`, when the
        association is requested; this is the lookup for the association's requests.
        """
        title = ae_title.strip()
        caller = self._listed(title)
        if caller is not None:
            return Access(title, caller.hospital, caller.query, caller.retrieve,
                          (caller.hospital,))
        if not self.dimse.accepts_any_caller:
            return NOBODY
        if not self.dimse.allow_any_ae:  # loopback, no list: this machine's own user
            return Access(title, DEFAULT_HOSPITAL, True, True, None)
        rights = self.dimse.any_ae_rights
        return Access(title, DEFAULT_HOSPITAL if Right.STORE.value in rights else None,
                      Right.QUERY.value in rights, Right.RETRIEVE.value in rights,
                      (DEFAULT_HOSPITAL,))

    def _listed(self, title: str) -> Caller | None:
        return next((c for c in self.dimse.callers if c.ae_title == title), None)

    def for_token(self, secret: str | None) -> Access:
        """What the bearer of ``secret`` may do (None: no Authorization given).

        Raises:
            NotAuthenticatedError: tokens are required and none or an unknown one was given.
            CatalogError: the index failed.
        """
        if self.tokens is None or not self.tokens.any_active():
            if secret is None and self.anonymous_web:
                return Access("anonymous", DEFAULT_HOSPITAL, True, True, None)
            if secret is None:
                raise NotAuthenticatedError("this node needs a token")
        if secret is None:
            raise NotAuthenticatedError("a bearer token is required")
        grant = self.tokens.grant_for(secret) if self.tokens is not None else None
        if grant is None:
            raise NotAuthenticatedError("unknown or revoked token")
        return _access_of(grant)


def _within(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.7 on a dual-stack listener is 10.0.0.7
    return any(ip in net for net in networks)


def _access_of(grant: TokenGrant) -> Access:
    scope = grant.scope
    read = scope in (TokenScope.READ, TokenScope.READWRITE, TokenScope.ADMIN)
    write = scope in (TokenScope.WRITE, TokenScope.READWRITE, TokenScope.ADMIN)
    hospitals = None if grant.hospital is None else (grant.hospital,)
    store = (grant.hospital or DEFAULT_HOSPITAL) if write else None
    return Access(grant.name, store, read, read, hospitals, not grant.pseudonymous)
