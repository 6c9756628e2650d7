"""Configuration: read once, at the edge, into frozen settings.

Sources, later ones winning: the embedded defaults (the same as ``config/node.toml``),
the TOML file given by ``--config`` or ``SUPPORT_NODE_CONFIG``, then environment
variables ``SUPPORT_NODE_<SECTION>_<KEY>`` (``SUPPORT_NODE_DIMSE_PORT=11113``;
``SUPPORT_NODE_STORE_OPTIONS_<KEY>`` for fsspec options). The home folder
(``--home`` / ``SUPPORT_NODE_HOME``, default ``./var``) holds the local store, the SQLite
index and the key file unless the config points elsewhere; relative paths in the config
are taken relative to it.

Unknown keys and bad values raise ``ConfigError`` naming the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import ConfigError
from pipelines.recipe import Recipe

ENV_PREFIX = "SUPPORT_NODE_"
_AE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # PS3.5 AE: 16 chars, no backslash
_HOSPITAL = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# Every spelling of a credential that node.store.backends accepts, so none shows in a repr.
_SECRET_OPTIONS = frozenset({
    "secret", "key", "password", "token", "session_token", "secret_key", "secret_access_key",
    "aws_secret_access_key", "aws_session_token", "access_key", "access_key_id",
    "aws_access_key_id",
})


class Secret(str):
    """A string whose repr never shows its value (starlette's habit)."""

    def __repr__(self) -> str:
        return "Secret('**********')"


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RIGHTS = ("store", "query", "retrieve")


@dataclass(frozen=True)
class Caller:
    """A calling AE title on the allow-list: the hospital its images belong to, and whether
    it may query (C-FIND) and retrieve (C-MOVE, C-GET); it sees its own hospital only.

    Bindings (each optional): ``hosts``, the networks it may connect from; ``cert_cn`` and
    ``cert_sha256``, the client certificate it must present over TLS (subject common name,
    SHA-256 fingerprint of the DER certificate in lower-case hex).
    """

    ae_title: str
    hospital: str
    query: bool = True
    retrieve: bool = True
    hosts: tuple[IPNetwork, ...] = ()
    cert_cn: str = ""
    cert_sha256: str = ""

    @property
    def needs_certificate(self) -> bool:
        return bool(self.cert_cn or self.cert_sha256)


@dataclass(frozen=True)
class Destination:
    """A C-MOVE destination: the AE title a requester names, and where it listens.

    With ``tls``, the node connects over TLS, checking the destination's certificate
    against ``ca_file`` (the system's CAs when empty) and its host name; ``cert_file`` and
    ``key_file`` give the node's own certificate when the destination asks for one.
    """

    ae_title: str
    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class DimseTlsSettings:
    """A second DIMSE listener that speaks TLS (1.2 or later) only; on when ``cert`` is set.

    ``ca``: the CAs that client certificates are checked against (none: no client
    certificate is asked for); ``require_client_cert``: refuse a client without one.
    """

    port: int = 2762
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = False

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class DimseSettings:
    """The DIMSE edge. ``max_associations`` counts established associations only;
    a connection must send its association request (and finish its TLS handshake) within
    ``association_request_timeout`` seconds; one address holds at most
    ``max_connections_per_address`` connections. ``any_ae_rights``: what callers that are
    not on the allow-list may do when ``allow_any_ae`` lets them in (echo always).
    ``max_instance_bytes``: the largest instance accepted, as received and once inflated
    (a deflated one); larger ones are refused (0xA700) and their association aborted."""

    ae_title: str = "SUPPORT_NODE"
    host: str = "127.0.0.1"
    port: int = 11112
    max_associations: int = 10
    allow_any_ae: bool = False
    max_pdu: int = 1048576
    network_timeout: int = 60
    workers: int = 1
    association_request_timeout: float = 5.0
    max_connections_per_address: int = 10
    any_ae_rights: tuple[str, ...] = ("store",)
    max_instance_bytes: int = 2 << 30
    callers: tuple[Caller, ...] = ()
    tls: DimseTlsSettings = DimseTlsSettings()

    @property
    def accepts_any_caller(self) -> bool:
        """Any caller is accepted on purpose, or by default when only loopback can reach us."""
        return self.allow_any_ae or (not self.callers and _is_loopback(self.host))


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP edge: DICOMweb under /dicom-web, /healthz, /metrics (node.web)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8042
    allow_anonymous: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    cors_origins: tuple[str, ...] = ()
    max_instance_bytes: int = 2 << 30
    viewer: bool = True
    viewer_dir: Path | None = None  # None: the one `make viewer` fetched, if any

    @property
    def anonymous_allowed(self) -> bool:
        """Requests without a token are served while no token exists: on purpose, or by
        default when only loopback can reach the server."""
        return self.allow_anonymous or _is_loopback(self.host)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


@dataclass(frozen=True)
class StoreSettings:
    url: str
    options: Mapping[str, Any] = field(default_factory=dict)
    fsync: bool = True
    chunk_size: int = 1048576
    # Back-pressure (node.pressure): refuse new instances, transiently, while the local
    # filesystems of the home and store have less free space than this, or than 5% of
    # their size when that is smaller (0: never refuse for space).
    min_free_bytes: int = 2 << 30
    # "spool": a received instance is acknowledged once durable in the home's local spool,
    # and uploaded to the store in the background (node.store.spool); "store": only once
    # the store holds it.
    ack: str = "spool"
    spool_max_bytes: int = 8 << 30  # refuse new instances while the spool holds more
    upload_threads: int = 8  # PUTs at once from the spool


@dataclass(frozen=True)
class IndexSettings:
    url: str = field(repr=False)  # may carry a database password


@dataclass(frozen=True)
class KeysSettings:
    file: Path
    bits: int = 128


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"


@dataclass(frozen=True)
class ProcessingSettings:
    """The processing workers: preprocessing and the blank-image filter of every instance.

    ``workers`` processes run beside the DIMSE receiver in ``serve`` (0: none; then a
    ``support-node worker`` elsewhere takes the jobs). A job not finished within
    ``lease_seconds`` of being taken (its worker died) is taken again; after
    ``max_attempts`` tries it is marked failed. An image of more than ``max_pixels``
    pixels (rows × columns × frames × samples) is not decoded: it is marked undecodable.
    """

    workers: int = 1
    recipe: str = "default"
    batch: int = 4
    poll_ms: int = 250
    lease_seconds: int = 300
    max_attempts: int = 3
    filter_downsample: int = 64
    filter_variance: float = 0.95
    filter_min_images: int = 64
    max_pixels: int = 1 << 28
    # Back-pressure: refuse new instances while more jobs than this wait (0: no limit).
    max_queue: int = 100000


@dataclass(frozen=True)
class SegmentSettings:
    """Segmentation of arriving series: a series is complete after ``quiet_seconds`` without a
    new instance (or at the count its header gives); then, with ``model`` (a library id
    such as ``unet/3``; empty: none), one segmentation job runs on it."""

    model: str = ""
    quiet_seconds: int = 60
    device: str = "cpu"


@dataclass(frozen=True)
class PretrainSettings:
    """Pretraining triggered by arriving images: every ``every`` new processed, unlabelled
    images (0: never) a DeepCluster job pretrains ``arch``'s encoder on everything stored
    (``clusters``, ``epochs``, at ``size``² — 0: the outputs' size) into the library."""

    every: int = 0
    arch: str = "unet"
    clusters: int = 50
    epochs: int = 10
    size: int = 128
    device: str = "cpu"


@dataclass(frozen=True)
class TrainSettings:
    """Defaults of `support-node train`: train at ``size``² (0: the outputs' size; never
    above it), for ``epochs``."""

    size: int = 128
    epochs: int = 10


@dataclass(frozen=True)
class Settings:
    home: Path
    dimse: DimseSettings
    store: StoreSettings
    index: IndexSettings
    keys: KeysSettings
    log: LogSettings
    destinations: tuple[Destination, ...] = ()
    http: HttpSettings = HttpSettings()
    processing: ProcessingSettings = ProcessingSettings()
    recipes: tuple[Recipe, ...] = (Recipe(),)
    segment: SegmentSettings = SegmentSettings()
    pretrain: PretrainSettings = PretrainSettings()
    train: TrainSettings = TrainSettings()

    def recipe(self, name: str | None = None) -> Recipe:
        """The recipe called ``name`` (default: ``processing.recipe``).

        Raises ConfigError naming the recipes there are.
        """
        name = name or self.processing.recipe
        for recipe in self.recipes:
            if recipe.name == name:
                return recipe
        known = ", ".join(r.name for r in self.recipes)
        raise ConfigError(f"no recipe called {name!r} (there are: {known})")

    def destination(self, ae_title: str) -> Destination | None:
        """The C-MOVE destination named ``ae_title``, or None when it is not configured."""
        for dest in self.destinations:
            if dest.ae_title == ae_title.strip():
                return dest
        return None


# The schema: section -> key -> (type, default). Defaults that depend on home are None.
_SCHEMA: dict[str, dict[str, tuple[type, Any]]] = {
    "dimse": {
        "ae_title": (str, "SUPPORT_NODE"),
        "host": (str, "127.0.0.1"),
        "port": (int, 11112),
        "max_associations": (int, 10),
        "allow_any_ae": (bool, False),
        "max_pdu": (int, 1048576),
        "network_timeout": (int, 60),
        "workers": (int, 0),  # 0: one per core (one when the port is 0)
        "association_request_timeout": (float, 5.0),
        "max_connections_per_address": (int, 10),
        "any_ae_rights": (tuple, ("store",)),
        "max_instance_bytes": (int, 2 << 30),
    },
    "dimse.tls": {
        "port": (int, 2762),
        "cert": (str, ""),
        "key": (str, ""),
        "ca": (str, ""),
        "require_client_cert": (bool, False),
    },
    "http": {
        "enabled": (bool, True),
        "host": (str, None),  # default: the DIMSE host
        "port": (int, 8042),
        "allow_anonymous": (bool, False),
        "tls_cert": (str, ""),
        "tls_key": (str, ""),
        "cors_origins": (str, ""),  # comma-separated origins; empty: CORS off
        "max_instance_bytes": (int, 2 << 30),
        "viewer": (bool, True),
        "viewer_dir": (str, ""),
    },
    "store": {
        "url": (str, None),
        "fsync": (bool, True),
        "chunk_size": (int, 1048576),
        "min_free_bytes": (int, 2 << 30),
        "ack": (str, "spool"),
        "spool_max_bytes": (int, 8 << 30),
        "upload_threads": (int, 8),
    },
    "index": {"url": (str, None)},
    "keys": {"file": (str, None), "bits": (int, 128)},
    "log": {"level": (str, "INFO")},
    "processing": {
        "workers": (int, 1),
        "recipe": (str, "default"),
        "batch": (int, 4),
        "poll_ms": (int, 250),
        "lease_seconds": (int, 300),
        "max_attempts": (int, 3),
        "filter_downsample": (int, 64),
        "filter_variance": (float, 0.95),
        "filter_min_images": (int, 64),
        "max_pixels": (int, 1 << 28),
        "max_queue": (int, 100000),
    },
    "segment": {
        "model": (str, ""),
        "quiet_seconds": (int, 60),
        "device": (str, "cpu"),
    },
    "pretrain": {
        "every": (int, 0),
        "arch": (str, "unet"),
        "clusters": (int, 50),
        "epochs": (int, 10),
        "size": (int, 128),
        "device": (str, "cpu"),
    },
    "train": {
        "size": (int, 128),
        "epochs": (int, 10),
    },
}


def valid_hospital(name: str) -> bool:
    """Whether ``name`` can be a hospital, the first level of the storage layout."""
    return bool(_HOSPITAL.fullmatch(name))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _coerce(name: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if kind is tuple:  # a list of strings; a comma-separated string from the environment
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
        return tuple(i.strip() for i in items if i.strip())
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if kind is int:
        if isinstance(value, bool | float):  # int(11112.5) would quietly drop the .5
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    values: dict[str, dict[str, Any]] = {}
    options: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in (ENV_PREFIX + "HOME", ENV_PREFIX + "CONFIG"):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest.startswith("store_options_"):
            options[rest[len("store_options_") :]] = value
            continue
        for section, keys in _SCHEMA.items():
            key = rest[len(section) + 1 :]
            if rest.startswith(section.replace(".", "_") + "_") and key in keys:
                values.setdefault(section, {})[key] = value
                break
        else:
            raise ConfigError(f"{name}: unknown configuration variable")
    return values, options


def _merge(file_data: dict[str, Any], env: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {s: {} for s in _SCHEMA}
    for section, table in file_data.items():
        if section in ("destinations", "recipes"):
            continue
        if section not in _SCHEMA or "." in section:
            raise ConfigError(f"[{section}]: unknown configuration section")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}]: expected a table")
        for key, value in table.items():
            if section == "dimse" and key == "callers":
                continue
            if section == "dimse" and key == "tls":
                _merge_nested("dimse.tls", value, merged)
                continue
            if section == "store" and key == "options":
                continue
            if key not in _SCHEMA[section]:
                raise ConfigError(f"{section}.{key}: unknown configuration key")
            merged[section][key] = value
    for section, table in env.items():
        merged[section].update(table)
    resolved: dict[str, dict[str, Any]] = {}
    for section, keys in _SCHEMA.items():
        resolved[section] = {}
        for key, (kind, default) in keys.items():
            value = merged[section].get(key, default)
            name = f"{section}.{key}"
            resolved[section][key] = None if value is None else _coerce(name, kind, value)
    return resolved


def _merge_nested(section: str, table: Any, merged: dict[str, dict[str, Any]]) -> None:
    """A table inside a section (``[dimse.tls]``) that has keys of its own in _SCHEMA."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}]: expected a table")
    for key, value in table.items():
        if key not in _SCHEMA[section]:
            raise ConfigError(f"{section}.{key}: unknown configuration key")
        merged[section][key] = value


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


def _dimse_tls(v: dict[str, Any], home: Path) -> DimseTlsSettings:
    files = {k: _under(home, v[k]) if v[k] else None for k in ("cert", "key", "ca")}
    for key, path in files.items():
        if path is not None and not path.is_file():
            raise ConfigError(f"dimse.tls.{key}: no such file {path}")
    return DimseTlsSettings(port=v["port"], require_client_cert=v["require_client_cert"],
                            **files)


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


def _http(v: dict[str, Any], dimse_host: str, home: Path) -> HttpSettings:
    origins = tuple(o.strip() for o in v["cors_origins"].split(",") if o.strip())
    return HttpSettings(
        enabled=v["enabled"], host=v["host"] or dimse_host, port=v["port"],
        allow_anonymous=v["allow_anonymous"],
        tls_cert=_under(home, v["tls_cert"]) if v["tls_cert"] else None,
        tls_key=_under(home, v["tls_key"]) if v["tls_key"] else None,
        cors_origins=origins, max_instance_bytes=v["max_instance_bytes"],
        viewer=v["viewer"],
        viewer_dir=_under(home, v["viewer_dir"]) if v["viewer_dir"] else None)


def _validate(s: Settings) -> None:
    d = s.dimse
    if not _AE.fullmatch(d.ae_title) or d.ae_title != d.ae_title.strip():
        raise ConfigError("dimse.ae_title: 1 to 16 characters, no backslash or edge spaces")
    if not 0 <= d.port <= 65535:
        raise ConfigError(f"dimse.port: {d.port} is not a TCP port")
    if d.workers < 1:
        raise ConfigError("dimse.workers: 0 (one per core) or more")
    if d.workers > 1 and d.port == 0:
        raise ConfigError("dimse.workers: several workers share one port; set dimse.port")
    if d.max_associations < 1:
        raise ConfigError("dimse.max_associations: must be at least 1")
    if d.max_instance_bytes < 1024:
        raise ConfigError("dimse.max_instance_bytes: at least 1024")
    if d.max_pdu != 0 and d.max_pdu < 4096:
        raise ConfigError("dimse.max_pdu: 0 (unlimited) or at least 4096")
    _validate_dimse_guards(d)
    if not d.callers and not d.allow_any_ae and not _is_loopback(d.host):
        raise ConfigError(
            f"dimse.host: binding to {d.host} with no [dimse.callers] allow-list; "
            "list the callers or set dimse.allow_any_ae = true on purpose"
        )
    h = s.http
    if not 0 <= h.port <= 65535:
        raise ConfigError(f"http.port: {h.port} is not a TCP port")
    if bool(h.tls_cert) != bool(h.tls_key):
        raise ConfigError("http.tls_cert and http.tls_key: give both or neither")
    if h.max_instance_bytes < 1024:
        raise ConfigError("http.max_instance_bytes: at least 1024")
    if s.keys.bits not in (128, 256):
        raise ConfigError("keys.bits: 128 or 256")
    if s.store.chunk_size < 4096:
        raise ConfigError("store.chunk_size: at least 4096")
    if s.store.ack not in ("spool", "store"):
        raise ConfigError('store.ack: "spool" or "store"')
    if s.store.spool_max_bytes < 0 or s.store.upload_threads < 1:
        raise ConfigError("store.spool_max_bytes: 0 (off) or more; store.upload_threads: "
                          "at least 1")
    if s.store.min_free_bytes < 0 or s.processing.max_queue < 0:
        raise ConfigError("store.min_free_bytes and processing.max_queue: 0 (off) or more")
    p = s.processing
    if p.workers < 0:
        raise ConfigError("processing.workers: 0 or more")
    for key in ("batch", "poll_ms", "lease_seconds", "max_attempts"):
        if getattr(p, key) < 1:
            raise ConfigError(f"processing.{key}: must be at least 1")
    if not 0.0 < p.filter_variance <= 1.0:
        raise ConfigError("processing.filter_variance: a fraction in (0, 1]")
    if p.filter_downsample < 8 or p.filter_min_images < 32:
        raise ConfigError("processing.filter_downsample >= 8 and filter_min_images >= 32")
    s.recipe()  # the default recipe must exist
    if s.segment.model and not re.fullmatch(r"[a-z0-9_]+/[0-9]+", s.segment.model):
        raise ConfigError("segment.model: a library id such as 'unet/3', or empty")
    if s.segment.quiet_seconds < 1:
        raise ConfigError("segment.quiet_seconds: must be at least 1")
    t = s.pretrain
    if t.every < 0 or t.clusters < 2 or t.epochs < 1 or t.size < 0:
        raise ConfigError("pretrain: every >= 0, clusters >= 2, epochs >= 1, size >= 0")
    if s.train.size < 0 or s.train.epochs < 1:
        raise ConfigError("train: size >= 0, epochs >= 1")
    if t.arch not in ("fcn", "unet", "unetpp"):
        raise ConfigError("pretrain.arch: fcn, unet or unetpp")
    if s.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log.level: DEBUG, INFO, WARNING or ERROR")


def _validate_dimse_guards(d: DimseSettings) -> None:
    if not 0 < d.association_request_timeout <= 300:
        raise ConfigError("dimse.association_request_timeout: seconds, more than 0, at most 300")
    if d.max_connections_per_address < 1:
        raise ConfigError("dimse.max_connections_per_address: must be at least 1")
    unknown = set(d.any_ae_rights) - set(RIGHTS)
    if unknown:
        raise ConfigError(f"dimse.any_ae_rights: {sorted(unknown)} unknown; use "
                          + ", ".join(f'"{r}"' for r in RIGHTS) + " (echo is always allowed)")
    t = d.tls
    if not 0 <= t.port <= 65535:
        raise ConfigError(f"dimse.tls.port: {t.port} is not a TCP port")
    if bool(t.cert) != bool(t.key):
        raise ConfigError("dimse.tls.cert and dimse.tls.key: give both or neither")
    if (t.ca or t.require_client_cert) and not t.enabled:
        raise ConfigError("dimse.tls.ca, require_client_cert: need dimse.tls.cert and key")
    if t.require_client_cert and not t.ca:
        raise ConfigError("dimse.tls.require_client_cert: needs dimse.tls.ca to check them")
    if t.enabled and t.port == d.port and t.port != 0:
        raise ConfigError("dimse.tls.port: must differ from dimse.port")
    for caller in d.callers:
        if caller.needs_certificate and not t.ca:
            raise ConfigError(f"dimse.callers.{caller.ae_title}: a certificate binding needs "
                              "dimse.tls.ca (client certificates are checked against it)")


def _under(home: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else home / path


def _sqlite_under(home: Path, url: str) -> str:
    """A SQLite URL whose relative file path (``sqlite:///rel.db``) is taken under ``home``."""
    head, sep, path = url.partition(":///")
    if not sep or not head.startswith("sqlite") or path.startswith("/") or path in ("", ":memory:"):
        return url
    file, query_sep, query = path.partition("?")
    return f"{head}:///{_under(home, file)}{query_sep}{query}"


def _receivers(dimse: Mapping[str, Any]) -> int:
    """``dimse.workers``, with 0 (the default) as one receiving process per core: the
    GIL binds one process to one core. A port the OS picks (0) cannot be shared: one."""
    workers = int(dimse["workers"])
    if workers == 0:
        return 1 if dimse["port"] == 0 else max(1, len(os.sched_getaffinity(0)))
    return workers if workers > 0 else -1


def load(
    config: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Builds the settings from defaults, the config file, the environment and overrides.

    ``overrides`` (``{"dimse": {"port": 11113}}``) come from command-line options.
    Raises ConfigError naming the first bad key.
    """
    env = os.environ if environ is None else environ
    home_path = Path(home or env.get(ENV_PREFIX + "HOME") or "./var").expanduser().resolve()
    config = config or env.get(ENV_PREFIX + "CONFIG")
    file_data = _read_file(Path(config)) if config else {}
    env_values, env_options = _env_layer(env)
    for section, table in (overrides or {}).items():
        env_values.setdefault(section, {}).update({k: v for k, v in table.items() if v is not None})
    v = _merge(file_data, env_values)
    raw_options = file_data.get("store", {}).get("options", {})
    if not isinstance(raw_options, dict):
        raise ConfigError("store.options: expected a table")
    options = {**raw_options, **env_options}
    options = {k: Secret(x) if k in _SECRET_OPTIONS and isinstance(x, str) else x
               for k, x in options.items()}
    store_url = v["store"]["url"] or f"file://{home_path / 'store'}"
    if store_url.startswith("file://") and not store_url.startswith("file:///"):
        store_url = "file://" + str(_under(home_path, store_url[len("file://") :]))
    elif "://" not in store_url:  # a plain path, as config/node.toml allows
        store_url = "file://" + str(_under(home_path, store_url))
    index_url = _sqlite_under(home_path, v["index"]["url"] or "sqlite:///index.sqlite")
    settings = Settings(
        home=home_path,
        dimse=DimseSettings(**{**v["dimse"], "workers": _receivers(v["dimse"])},
                            callers=_callers(file_data),
                            tls=_dimse_tls(v["dimse.tls"], home_path)),
        store=StoreSettings(
            url=store_url, options=options, fsync=v["store"]["fsync"],
            chunk_size=v["store"]["chunk_size"], min_free_bytes=v["store"]["min_free_bytes"],
            ack=v["store"]["ack"], spool_max_bytes=v["store"]["spool_max_bytes"],
            upload_threads=v["store"]["upload_threads"],
        ),
        index=IndexSettings(url=index_url),
        keys=KeysSettings(file=_under(home_path, v["keys"]["file"] or "keys.json"),
                          bits=v["keys"]["bits"]),
        log=LogSettings(level=v["log"]["level"].upper()),
        destinations=_destinations(file_data, home_path),
        http=_http(v["http"], v["dimse"]["host"], home_path),
        processing=ProcessingSettings(**v["processing"]),
        recipes=_recipes(file_data),
        segment=SegmentSettings(**v["segment"]),
        pretrain=PretrainSettings(**v["pretrain"]),
        train=TrainSettings(**v["train"]),
    )
    _validate(settings)
    return settings
