"""Prometheus metrics every service exports; the `service` label keeps them apart in one process."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "omnistock_http_requests_total", "HTTP requests served", ["service", "method", "route", "status"]
)
LATENCY = Histogram(
    "omnistock_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
# From an event's created_at (inside its writer's transaction, just before commit) to the moment a
# stream writes it to a client: how stale a live reader's view is.
STALENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
SSE_STALENESS = Histogram(
    "omnistock_sse_staleness_seconds", "Age of an event when a stream writes it to its client",
    ["service", "family"], buckets=STALENESS_BUCKETS,
)
