"""The named tables of the config file, keyed by AE title or name: ``[dimse.callers.AE]``
(the allow-list), ``[destinations.AE]`` (C-MOVE destinations) and ``[recipes.NAME]``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from node.errors import ConfigError
from node.settings.model import _AE, Caller, Destination, IPNetwork, valid_hospital
from node.settings.sources import _coerce, _under
from pipelines.recipe import Recipe


def _callers(file_data: dict[str, Any]) -> tuple[Caller, ...]:
    table = file_data.get("dimse", {}).get("callers", {})
    if not isinstance(table, dict):
        raise ConfigError("dimse.callers: expected a table of AE titles")
    callers = []
    for ae_title, entry in table.items():
        name = f"dimse.callers.{ae_title}"
        if not _AE.fullmatch(ae_title) or ae_title != ae_title.strip():
            raise ConfigError(f"{name}: not a valid AE title")
        if not isinstance(entry, dict) or set(entry) - set(_CALLER_KEYS):
            raise ConfigError(f"{name}: expected a table with the keys "
                              + ", ".join(f"'{k}'" for k in _CALLER_KEYS))
        hospital = entry.get("hospital", "default")
        if not isinstance(hospital, str) or not valid_hospital(hospital):
            raise ConfigError(f"{name}.hospital: use lower-case letters, digits, '.', '_', '-'")
        query = _coerce(f"{name}.query", bool, entry.get("query", True))
        retrieve = _coerce(f"{name}.retrieve", bool, entry.get("retrieve", True))
        callers.append(Caller(ae_title, hospital, query, retrieve,
                              hosts=_networks(f"{name}.hosts", entry.get("hosts", [])),
                              cert_cn=_coerce(f"{name}.cert_cn", str, entry.get("cert_cn", "")),
                              cert_sha256=_fingerprint(f"{name}.cert_sha256",
                                                       entry.get("cert_sha256", ""))))
    return tuple(callers)


_CALLER_KEYS = ("hospital", "query", "retrieve", "hosts", "cert_cn", "cert_sha256")


def _networks(name: str, value: Any) -> tuple[IPNetwork, ...]:
    """Addresses and networks (``10.0.0.7``, ``10.1.0.0/16``, ``::1``); no host names."""
    out = []
    for item in _coerce(name, tuple, value):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not an IP address or network") from None
    return tuple(out)


def _fingerprint(name: str, value: Any) -> str:
    """A SHA-256 fingerprint as ``openssl x509 -fingerprint -sha256`` prints it (any case,
    colons optional), normalised to lower-case hex."""
    text = _coerce(name, str, value).strip().lower().removeprefix("sha256:").replace(":", "")
    if text and not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ConfigError(f"{name}: expected a SHA-256 fingerprint (64 hex digits)")
    return text


def _destinations(file_data: dict[str, Any], home: Path) -> tuple[Destination, ...]:
    table = file_data.get("destinations", {})
    if not isinstance(table, dict):
        raise ConfigError("destinations: expected a table of AE titles")
    out = []
    for ae_title, entry in table.items():
        name = f"destinations.{ae_title}"
        if not _AE.fullmatch(ae_title) or ae_title != ae_title.strip():
            raise ConfigError(f"{name}: not a valid AE title")
        known = {"host", "port", "tls", "ca_file", "cert_file", "key_file"}
        if not isinstance(entry, dict) or set(entry) - known or "port" not in entry:
            raise ConfigError(f"{name}: expected a table with the keys "
                              "'host', 'port', 'tls', 'ca_file', 'cert_file', 'key_file'")
        host = entry.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"{name}.host: expected a host name or address")
        port = _coerce(f"{name}.port", int, entry["port"])
        if not 1 <= port <= 65535:
            raise ConfigError(f"{name}.port: {port} is not a TCP port")
        tls = _coerce(f"{name}.tls", bool, entry.get("tls", False))
        files = {}
        for key in ("ca_file", "cert_file", "key_file"):
            value = entry.get(key)
            if value is not None:
                path = _under(home, _coerce(f"{name}.{key}", str, value))
                if not path.is_file():
                    raise ConfigError(f"{name}.{key}: no such file {path}")
                files[key] = path
        if files and not tls:
            raise ConfigError(f"{name}.tls: certificate files given but tls is not true")
        if ("cert_file" in files) != ("key_file" in files):
            raise ConfigError(f"{name}.key_file: cert_file and key_file go together")
        out.append(Destination(ae_title, host, port, tls, **files))
    return tuple(out)


def _recipes(file_data: dict[str, Any]) -> tuple[Recipe, ...]:
    """``[recipes.NAME]`` sections; a built-in ``default`` unless one is given."""
    table = file_data.get("recipes", {})
    if not isinstance(table, dict):
        raise ConfigError("recipes: expected a table of recipe names")
    recipes = {"default": Recipe()}
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"recipes.{name}: expected a table")
        try:
            recipes[name] = Recipe.from_mapping({**entry, "name": name})
        except ValueError as exc:
            raise ConfigError(f"recipes.{name}: {exc}") from None
    return tuple(recipes.values())
