"""The [dimse] guard settings and [dimse.tls]: read from file and environment, bad values
refused naming the key."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from node.access import AccessPolicy, CallerRefusedError, ClientCertificate, Refusal, Right
from node.errors import ConfigError
from node.settings import Settings
from tests.dimse.conftest import Certs

Factory = Callable[..., Settings]


def test_defaults(settings_factory: Factory) -> None:
    d = settings_factory().dimse
    assert (d.association_request_timeout, d.max_connections_per_address) == (5.0, 10)
    assert d.any_ae_rights == ("store",)
    assert not d.tls.enabled and d.tls.port == 2762


def test_tls_and_bindings_from_file_and_environment(settings_factory: Factory,
                                                    certs: Certs) -> None:
    sha = certs.fingerprint(certs.hospa[1])
    s = settings_factory(
        {"dimse": {"tls": {"cert": str(certs.server[1]), "key": str(certs.server[0]),
                           "ca": str(certs.ca)},
                   "callers": {"CT1": {"hospital": "hospa", "hosts": ["10.0.0.7", "10.1.0.0/16"],
                                       "cert_sha256": sha}}}},
        env={"SUPPORT_NODE_DIMSE_TLS_PORT": "11113",
             "SUPPORT_NODE_DIMSE_TLS_REQUIRE_CLIENT_CERT": "true",
             "SUPPORT_NODE_DIMSE_ANY_AE_RIGHTS": "store, query"})
    d = s.dimse
    assert d.tls.enabled and d.tls.port == 11113 and d.tls.require_client_cert
    assert d.any_ae_rights == ("store", "query")
    caller = d.callers[0]
    assert caller.hosts == (ipaddress.ip_network("10.0.0.7"), ipaddress.ip_network("10.1.0.0/16"))
    assert caller.cert_sha256 == sha.replace(":", "").lower()


@pytest.mark.parametrize(("config", "key"), [
    ({"dimse": {"tls": {"prot": 1}}}, "dimse.tls.prot"),
    ({"dimse": {"tls": {"cert": "missing.pem", "key": "missing.key"}}}, "dimse.tls.cert"),
    ({"dimse": {"any_ae_rights": ["delete"]}}, "dimse.any_ae_rights"),
    ({"dimse": {"any_ae_rights": "store"}}, None),  # a single string is one right: fine
    ({"dimse": {"association_request_timeout": 0}}, "dimse.association_request_timeout"),
    ({"dimse": {"max_connections_per_address": 0}}, "dimse.max_connections_per_address"),
    ({"dimse": {"callers": {"CT1": {"hospital": "a", "hosts": ["pacs.example"]}}}},
     "dimse.callers.CT1.hosts"),
    ({"dimse": {"callers": {"CT1": {"hospital": "a", "cert_sha256": "abc"}}}},
     "dimse.callers.CT1.cert_sha256"),
    ({"dimse": {"callers": {"CT1": {"hospital": "a", "cert_cn": "x"}}}}, "dimse.callers.CT1"),
])
def test_bad_values_name_the_key(settings_factory: Factory, config: dict[str, Any],
                                 key: str | None) -> None:
    if key is None:
        settings_factory(config)
        return
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        settings_factory(config)


def test_tls_key_without_a_certificate_is_refused(settings_factory: Factory,
                                                  certs: Certs) -> None:
    with pytest.raises(ConfigError, match="dimse.tls.cert and dimse.tls.key"):
        settings_factory({"dimse": {"tls": {"key": str(certs.server[0])}}})
    with pytest.raises(ConfigError, match="require_client_cert: needs dimse.tls.ca"):
        settings_factory({"dimse": {"tls": {"key": str(certs.server[0]),
                                            "cert": str(certs.server[1]),
                                            "require_client_cert": True}}})


def test_policy_admits_by_address_and_certificate(settings_factory: Factory,
                                                  certs: Certs) -> None:
    s = settings_factory({"dimse": {
        "host": "0.0.0.0", "allow_any_ae": True, "any_ae_rights": [],
        "tls": {"cert": str(certs.server[1]), "key": str(certs.server[0]), "ca": str(certs.ca)},
        "callers": {"CT1": {"hospital": "hospa", "hosts": ["10.1.0.0/16"],
                            "cert_cn": "ct1.hospa.example"}}}})
    policy = AccessPolicy(s.dimse)
    good = ClientCertificate("ct1.hospa.example", "00" * 32)
    assert policy.admit("CT1", "10.1.2.3", good).hospital == "hospa"
    assert policy.admit("CT1", "::ffff:10.1.2.3", good).hospital == "hospa"
    for address, cert, reason in [("10.2.0.1", good, Refusal.WRONG_ADDRESS),
                                  ("10.1.2.3", None, Refusal.NO_CERTIFICATE),
                                  ("10.1.2.3", ClientCertificate("other", "00" * 32),
                                   Refusal.WRONG_CERTIFICATE)]:
        with pytest.raises(CallerRefusedError) as refused:
            policy.admit("CT1", address, cert)
        assert refused.value.reason is reason
    anyone = policy.admit("SOMEONE", "192.0.2.1")  # any_ae_rights = []: echo only
    assert not any(anyone.allows(r) for r in Right)
