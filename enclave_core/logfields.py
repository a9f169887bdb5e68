"""What a log line carries: a loguru record as its entry, with sensitive fields masked.

Shared by the JSON lines (:mod:`enclave_core.log`) and the readable ones
(:mod:`enclave_core.logview`).
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any

SENSITIVE_FIELDS = ("token", "secret_value", "plaintext", "password", "data_key", "dek", "value")
#: What a masked field's value becomes.
REDACTED = "[redacted]"


def redact(extra: dict[str, Any]) -> dict[str, Any]:
    """Return ``extra`` with sensitive-looking fields masked."""
    out = {}
    for key, val in extra.items():
        lowered = key.lower()
        if any(lowered == s or lowered.endswith("_" + s) for s in SENSITIVE_FIELDS):
            out[key] = REDACTED
        else:
            out[key] = val
    return out


def log_entry(record: Any) -> dict[str, Any]:
    """One loguru record as the entry of its JSON line: ``time``, ``level``, ``msg`` and bound
    fields (redacted), plus ``error`` for an exception logged at ERROR or above."""
    entry: dict[str, Any] = {
        "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "msg": record["message"],
    }
    entry.update(redact(record["extra"]))
    if record["exception"] is not None and record["level"].no >= logging.ERROR:
        exc = record["exception"]
        entry.setdefault("error", f"{exc.type.__name__}: {exc.value}" if exc.type else "")
    return entry


__all__ = ["REDACTED", "SENSITIVE_FIELDS", "log_entry", "redact"]
