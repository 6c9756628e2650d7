"""Checks across the built settings: ranges, pairs of keys that go together, and the
safety rules (no open DIMSE port beyond loopback without an allow-list). Each failure raises
``ConfigError`` naming the key.
"""

from __future__ import annotations

import re

from node.errors import ConfigError
from node.settings.model import _AE, RIGHTS, DimseSettings, Settings, _is_loopback


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
    if s.store.other_spool_wait < 0:
        raise ConfigError("store.other_spool_wait: 0 (fail at once) or more seconds")
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
