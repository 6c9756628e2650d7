"""Prometheus metrics of the node, protocol-free: the edges and ingest record here, the web
edge exposes them at ``/metrics``.

``support-node serve`` runs several processes (DIMSE receivers, processing workers, the
HTTP server): it gives them one folder in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode, set before this module is first imported, see :func:`use_folder`), so
``/metrics`` adds up every process's counters and histograms. Without it (tests, the Python
API) the metrics are this process's own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from node.metrics_folder import MULTIPROC_ENV, use_folder  # noqa: F401

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES = Counter("support_node_instances_received", "Instances received, by protocol and "
                    "outcome (stored, duplicate, conflict, refused, failed)",
                    ["protocol", "outcome"], registry=REGISTRY)
BYTES = Counter("support_node_bytes_received", "Bytes of instances received", ["protocol"],
                registry=REGISTRY)
INGEST_SECONDS = Histogram(
    "support_node_ingest_stage_seconds", "Time per ingest stage: receive (the instance's "
    "bytes arriving), parse, describe (the DICOM JSON, description and index record), "
    "encrypt_write, spool (append to the local spool and its fdatasync), index, "
    "acknowledge (the whole path until the sender is told)", ["stage"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PROCESSING_SECONDS = Histogram(
    "support_node_processing_stage_seconds", "Time per processing stage (decode, derive, "
    "filter, write)", ["stage"], registry=REGISTRY)
HTTP_SECONDS = Histogram("support_node_http_request_seconds", "HTTP request latency by "
                         "service (qido, wado, stow, other)", ["service"], registry=REGISTRY)
OPEN_ASSOCIATIONS = Gauge("support_node_open_associations", "DIMSE associations open now",
                          registry=REGISTRY, multiprocess_mode="livesum")
QUEUE_DEPTH = Gauge("support_node_queue_depth", "Jobs queued or running", registry=REGISTRY,
                    multiprocess_mode="mostrecent")
INSTANCES_BY_STATE = Gauge("support_node_instances", "Stored instances by processing state",
                           ["state"], registry=REGISTRY, multiprocess_mode="mostrecent")
CONTENT_TYPE = CONTENT_TYPE_LATEST


def exposition() -> bytes:
    """The metrics in Prometheus text format: every process's, in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def process_gone(pid: int) -> None:
    """Forgets the live gauges of a process that stopped (multiprocess mode)."""
    if os.environ.get(MULTIPROC_ENV):
        _multiprocess.mark_process_dead(pid)


@contextmanager
def timed(histogram: Histogram, label: str) -> Iterator[None]:
    """Records the time the block takes in ``histogram`` under ``label``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(label).observe(time.perf_counter() - start)
