"""Prometheus exposition of the supervisor's ``GET /metrics`` (its own CollectorRegistry).

``enclave_<counter>_total``: the runtime's counters (README: HTTP APIs), read from its
enclave-info at scrape time (absent while it is unreachable; reset when it restarts);
``enclave_up``; ``enclave_restarts_total``; and the management API's own
``enclave_supervisor_requests_total`` and ``enclave_supervisor_request_duration_seconds``, whose
``path`` label is the route template.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from enclave_core.metrics import COUNTERS

#: The text format generate_latest writes (the brief's exposition version).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EnclaveCollector:
    """Yields the enclave families from the snapshot taken for the current scrape."""

    def __init__(self) -> None:
        self.up = 0
        self.restarts = 0
        self.counters: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "enclave_up", "1 when the enclave runs and its runtime answers ready.", value=self.up
        )
        yield CounterMetricFamily(
            "enclave_restarts", "Enclave restarts performed by the watchdog.", value=self.restarts
        )
        for name in COUNTERS:
            if name in self.counters:
                yield CounterMetricFamily(
                    f"enclave_{name}",
                    f"The runtime's {name} counter (resets when the runtime restarts).",
                    value=self.counters[name],
                )


class SupervisorMetrics:
    """The supervisor's metrics: request instrumentation plus the enclave snapshot."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._enclave = _EnclaveCollector()
        self.registry.register(self._enclave)
        self._requests = Counter(
            "enclave_supervisor_requests",
            "Management API requests served.",
            ["method", "path", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "enclave_supervisor_request_duration_seconds",
            "Management API request latency.",
            ["method", "path"],
            registry=self.registry,
        )

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        """Count one served request and its latency."""
        self._requests.labels(method=method, path=path, status=str(status)).inc()
        self._latency.labels(method=method, path=path).observe(seconds)

    def render(self, *, up: bool, restarts: int, counters: Mapping[str, Any] | None) -> bytes:
        """Exposition text for one scrape, with the enclave values given."""
        clean = {
            name: int(value)
            for name, value in (counters or {}).items()
            if name in COUNTERS and isinstance(value, int) and not isinstance(value, bool)
        }
        with self._lock:  # one scrape's snapshot at a time
            self._enclave.up = 1 if up else 0
            self._enclave.restarts = restarts
            self._enclave.counters = clean
            return generate_latest(self.registry)
