"""TLS for incoming associations (DICOM PS3.15 B.1): the server context and who the
client's certificate says it is.

The TLS listener accepts TLS 1.2 and later only. With ``[dimse.tls] ca`` set, a client's
certificate is asked for and checked against those CAs (required with
``require_client_cert``); a certificate that does not chain to them fails the handshake.
"""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

from node.access import ClientCertificate
from node.errors import ConfigError
from node.settings import DimseTlsSettings


def server_context(tls: DimseTlsSettings) -> ssl.SSLContext:
    """The SSL context of the TLS listener.

    Raises ConfigError naming the key when a certificate, key or CA file cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert tls.cert is not None and tls.key is not None
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("dimse.tls.cert / dimse.tls.key: cannot load them "
                          f"({failure_reason(exc)}); expected a PEM certificate (chain) and "
                          "its unencrypted PEM private key") from None
    if tls.ca is None:
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        context.load_verify_locations(cafile=str(tls.ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"dimse.tls.ca: cannot load it: {failure_reason(exc)}") from None
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_certificate(sock: Any) -> ClientCertificate | None:
    """The verified client certificate of a TLS connection; None over plain TCP or when the
    client gave none (unverified ones never get this far: the handshake fails)."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    return ClientCertificate(common_name=_common_name(sock.getpeercert() or {}),
                             sha256=hashlib.sha256(der).hexdigest())


def _common_name(info: dict[str, Any]) -> str:
    for rdn in info.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def failure_reason(exc: BaseException) -> str:
    """A short reason for a TLS failure: OpenSSL's reason code, or the error's name."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason) if reason else type(exc).__name__
