"""Logging: loguru JSON lines on stderr with the field names of DESIGN section 9.

Configure sinks only from the CLI entry points (``configure_logging``). Elsewhere use
``from loguru import logger`` and pass fields as keyword arguments, never as format strings built
from untrusted text. Secret values, data keys, attestation documents and tokens are never logged;
``redact`` masks any field whose name suggests one, as a last line of defence.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from loguru import logger

SENSITIVE_FIELDS = ("token", "secret_value", "plaintext", "password", "data_key", "dek", "value")
_REDACTED = "[redacted]"


def redact(extra: dict[str, Any]) -> dict[str, Any]:
    """Return ``extra`` with sensitive-looking fields masked."""
    out = {}
    for key, val in extra.items():
        lowered = key.lower()
        if any(lowered == s or lowered.endswith("_" + s) for s in SENSITIVE_FIELDS):
            out[key] = _REDACTED
        else:
            out[key] = val
    return out


def format_record(record: Any) -> str:
    """Render one loguru record as a JSON line: ``time``, ``level``, ``msg`` and bound fields."""
    entry: dict[str, Any] = {
        "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "msg": record["message"],
    }
    entry.update(redact(record["extra"]))
    if record["exception"] is not None and record["level"].no >= logging.ERROR:
        exc = record["exception"]
        entry.setdefault("error", f"{exc.type.__name__}: {exc.value}" if exc.type else "")
    return json.dumps(entry, default=str)


def _json_sink(stream: TextIO) -> Any:
    def sink(message: Any) -> None:
        stream.write(format_record(message.record) + "\n")
        stream.flush()

    return sink


def _human_sink(stream: TextIO) -> Any:
    def sink(message: Any) -> None:
        rec = message.record
        extras = " ".join(f"{k}={v}" for k, v in redact(rec["extra"]).items())
        stamp = rec["time"].strftime("%H:%M:%S")
        stream.write(f"{stamp} {rec['level'].name:<7} {rec['message']} {extras}".rstrip() + "\n")
        stream.flush()

    return sink


class BurstCounter:
    """Counts repeated events and says when one log line should stand for them: at most one
    per ``every_s`` seconds. A flood of refused connections, or a client polling every few ms
    while an enclave starts, would otherwise write a line per event.

    ``hit()`` counts one event and returns how many events the line to write now covers (the
    ones since the last line, this one included), or None when it is too soon for a line.
    """

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.count = 0  # every event so far
        self._reported = 0
        self._last = -float("inf")

    def hit(self) -> int | None:
        """Count one event; the number of events to report now, or None."""
        self.count += 1
        now = time.monotonic()
        if now - self._last < self.every_s:
            return None
        self._last = now
        covered, self._reported = self.count - self._reported, self.count
        return covered


class _InterceptHandler(logging.Handler):
    """Routes stdlib logging (cliff, botocore) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, "{}", record.getMessage())


def configure_logging(
    level: str = "INFO", *, human: bool | None = None, stream: TextIO | None = None, **bind: Any
) -> None:
    """Install the one stderr sink. ``human`` defaults to whether stderr is a terminal."""
    stream = stream or sys.stderr
    if human is None:
        human = stream.isatty()
    logger.remove()
    logger.configure(extra=bind)
    logger.add(_human_sink(stream) if human else _json_sink(stream), level=level, enqueue=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def utc_now() -> str:
    """The current time as an RFC 3339 UTC string."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
