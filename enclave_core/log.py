"""Logging: loguru JSON lines on stderr.

Configure sinks only from the CLI entry points (:func:`configure_logging`); elsewhere use
``from loguru import logger`` with fields as keyword arguments, never format strings built from
untrusted text. Secrets, data keys, documents and tokens are never logged; ``redact``
(:mod:`enclave_core.logfields`) masks suspicious fields as a last defence. Stderr gets JSON or,
for a person, readable lines (:mod:`enclave_core.logview`; ``log_format`` ``auto`` picks them on a
terminal), and echoed children's lines follow (:func:`render_echoed`); files always get JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from loguru import logger

from enclave_core.logfields import log_entry
from enclave_core.logview import render_line, render_record

#: The values of ``--log-format``: readable lines on a terminal and JSON otherwise, or either one.
LOG_FORMATS = ("auto", "text", "json")


def format_record(record: Any) -> str:
    """Render one loguru record as a JSON line: ``time``, ``level``, ``msg`` and bound fields."""
    return json.dumps(log_entry(record), default=str)


def _json_sink(stream: TextIO) -> Any:
    def sink(message: Any) -> None:
        stream.write(format_record(message.record) + "\n")
        stream.flush()

    return sink


def _human_sink(stream: TextIO, colour: bool) -> Any:

    def sink(message: Any) -> None:
        stream.write(render_record(message.record, colour=colour) + "\n")
        stream.flush()

    return sink


def use_colour(stream: TextIO) -> bool:
    """Whether readable lines on ``stream`` get colours: only on a terminal, and not when the
    ``NO_COLOR`` convention or a dumb terminal asks for none."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def human_for(log_format: str) -> bool | None:
    """``configure_logging``'s ``human`` for a ``--log-format`` value; None lets the stream
    decide."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    return {"auto": None, "text": True, "json": False}[log_format]


def _as_is(text: str) -> str:
    return text


def _readable_echo(colour: bool) -> Callable[[str], str]:

    def view(text: str) -> str:
        return render_line(text, colour=colour)

    return view


#: How a line echoed from a child process is shown on stderr; set by configure_logging.
_echo_view: Callable[[str], str] = _as_is


def render_echoed(text: str) -> str:
    """A child process's output line (a JSON log line or plain text) as stderr shows it now:
    unchanged with JSON logs, rendered readably with readable ones."""
    return _echo_view(text)


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
    """Install the one stderr sink and the matching view of echoed lines (:func:`render_echoed`).

    ``human`` picks readable lines (True) or JSON lines (False); None means readable lines when
    ``stream`` is a terminal. Readable lines are coloured only on a terminal.
    """
    global _echo_view
    stream = stream or sys.stderr
    if human is None:
        human = stream.isatty()
    logger.remove()
    logger.configure(extra=bind)
    if human:
        colour = use_colour(stream)
        logger.add(_human_sink(stream, colour), level=level, enqueue=False)
        _echo_view = _readable_echo(colour)
    else:
        logger.add(_json_sink(stream), level=level, enqueue=False)
        _echo_view = _as_is
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def utc_now() -> str:
    """The current time as an RFC 3339 UTC string."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
