"""The runtime's counters (README: HTTP APIs): thread-safe, exported as JSON and Prometheus text."""

from __future__ import annotations

import threading

COUNTERS = (
    "http_requests",
    "http_errors",
    "kms_operations",
    "kms_errors",
    "storage_reads",
    "storage_writes",
    "storage_deletes",
    "storage_errors",
    "secret_reads",
    "secret_writes",
    "secret_deletes",
)


class Metrics:
    """Exactly the eleven counters of the README's HTTP APIs section, all starting at 0."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)

    def inc(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name`` (which must be one of COUNTERS)."""
        if name not in self._values:
            raise KeyError(name)
        with self._lock:
            self._values[name] += amount

    def snapshot(self) -> dict[str, int]:
        """Return a copy of every counter."""
        with self._lock:
            return dict(self._values)
