"""Prometheus metrics: one registry per process component (no module-level collectors, so
tests can run several components in one interpreter), served over HTTP."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds; from sub-millisecond Redis reads to multi-second CPU inference.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)
# List age (freshness) in seconds: from just written to the 7-day TTL.
AGE_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400)


class Metrics:
    """A registry and factory helpers; components subclass it and declare their metrics."""

    def __init__(self, namespace: str) -> None:
        self.registry = CollectorRegistry()
        self.ns = namespace

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, namespace=self.ns, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, namespace=self.ns, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = (),
                  buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        return Histogram(name, doc, labels, namespace=self.ns, registry=self.registry,
                         buckets=buckets)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Expose ``/metrics`` on its own port (processes without an HTTP server); 0 = off."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
