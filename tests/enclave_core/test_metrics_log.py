"""Counters and the JSON log format."""

from __future__ import annotations

import io
import json
import threading

import pytest
from loguru import logger

from enclave_core.log import configure_logging
from enclave_core.metrics import COUNTERS, Metrics


def test_exactly_the_eleven_counters_start_at_zero() -> None:
    snapshot = Metrics().snapshot()
    assert list(snapshot) == list(COUNTERS)
    assert len(snapshot) == 11 and set(snapshot.values()) == {0}


def test_counters_are_thread_safe() -> None:
    metrics = Metrics()

    def work() -> None:
        for _ in range(2000):
            metrics.inc("http_requests")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.snapshot()["http_requests"] == 8000
    with pytest.raises(KeyError):
        metrics.inc("not_a_counter")


def test_json_lines_with_fields_and_redaction() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", human=False, stream=stream)
    try:
        logger.bind(key_id="k-1", token="abcd").info("key used", method="GET")
    finally:
        logger.remove()
    entry = json.loads(stream.getvalue().strip())
    assert entry["msg"] == "key used" and entry["level"] == "INFO"
    assert entry["key_id"] == "k-1" and entry["method"] == "GET"
    assert entry["token"] == "[redacted]"
    assert "abcd" not in stream.getvalue()
    assert entry["time"].endswith("+00:00")


def test_burst_counter_reports_one_line_per_burst_with_the_events_it_covers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from enclave_core import log

    clock = [100.0]
    monkeypatch.setattr(log.time, "monotonic", lambda: clock[0])
    burst = log.BurstCounter(every_s=10.0)
    assert burst.hit() == 1  # the first event is reported at once
    assert [burst.hit() for _ in range(5)] == [None] * 5  # then quiet for 10 s
    clock[0] += 10.0
    assert burst.hit() == 6  # the five held back and this one
    assert burst.count == 7
