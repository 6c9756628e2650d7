"""Prometheus metrics of the node, protocol-free: the edges and ingest record here, the web
edge exposes them at ``/metrics``.

Metrics live in the process that records them: with ``[dimse] workers = 1`` (the default)
DIMSE, ingest and HTTP share one process, so ``/metrics`` sees them all; with several DIMSE
worker processes it sees the HTTP process's own (STOW-RS, QIDO-RS, WADO-RS) and the index's
gauges, which every process shares.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES = Counter("support_node_instances_received", "Instances received, by protocol and "
                    "outcome (stored, duplicate, conflict, refused, failed)",
                    ["protocol", "outcome"], registry=REGISTRY)
BYTES = Counter("support_node_bytes_received", "Bytes of instances received", ["protocol"],
                registry=REGISTRY)
INGEST_SECONDS = Histogram(
    "support_node_ingest_stage_seconds", "Time per ingest stage: receive (the instance's "
    "bytes arriving), parse, encrypt_write, index, acknowledge (the whole path until the "
    "sender is told)", ["stage"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PROCESSING_SECONDS = Histogram(
    "support_node_processing_stage_seconds", "Time per processing stage (decode, derive, "
    "filter, write)", ["stage"], registry=REGISTRY)
HTTP_SECONDS = Histogram("support_node_http_request_seconds", "HTTP request latency by "
                         "service (qido, wado, stow, other)", ["service"], registry=REGISTRY)
OPEN_ASSOCIATIONS = Gauge("support_node_open_associations", "DIMSE associations open now "
                          "(this process)", registry=REGISTRY)
QUEUE_DEPTH = Gauge("support_node_queue_depth", "Jobs queued or running", registry=REGISTRY)
INSTANCES_BY_STATE = Gauge("support_node_instances", "Stored instances by processing state",
                           ["state"], registry=REGISTRY)


@contextmanager
def timed(histogram: Histogram, label: str) -> Iterator[None]:
    """Records the time the block takes in ``histogram`` under ``label``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(label).observe(time.perf_counter() - start)
