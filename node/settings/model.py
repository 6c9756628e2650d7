"""The settings objects: frozen dataclasses, one per config section, and ``Settings``.

They hold values already checked; ``node.settings.loading`` builds them. ``Secret`` is a string
with a masked repr, for credentials among the store options.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import ConfigError
from pipelines.recipe import Recipe

_AE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # PS3.5 AE: 16 chars, no backslash
_HOSPITAL = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


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
    # Seconds a read of an instance still in another node's spool (nodes sharing one
    # index) waits for that node to upload it before it fails (0: fail at once).
    other_spool_wait: float = 30.0


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
