"""Readable log lines for a person at a terminal.

``HH:MM:SS.mmm LEVEL component message key=value ...`` for the supervisor's own records and the
JSON lines of its children alike, so `enclave dev` shows one format. The JSON lines of
:mod:`enclave_core.log` stay the record of truth; this view drops redacted fields, cuts long
opaque values to 16 characters and escapes control characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from enclave_core.logfields import REDACTED, log_entry, redact

#: How many characters of a long opaque value (a PCR, a digest) are kept.
SHORT_LEN = 16
#: Any value longer than this is cut: the JSON line keeps it whole.
MAX_VALUE_LEN = 240
LEVEL_WIDTH = 7
COMPONENT_WIDTH = 10
#: The component of a line that is not a JSON log entry: the app printed it.
TEXT_COMPONENT = "app"

# Entry keys rendered in their own columns rather than as key=value.
_COLUMNS = ("time", "level", "msg")
#: The ``source`` values that name who wrote a line: shown as its component. Any other ``source``
#: field (a folder, say) is an ordinary field.
SOURCES = ("app", "log-channel")
_ELLIPSIS = "…"
_HEX = re.compile(r"[0-9a-fA-F]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
# C0 controls but tab, DEL and the C1 controls (ESC and CSI among them).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_NEEDS_QUOTES = re.compile(r'[\s"=\\]')

_RESET = "\x1b[0m"
_DIM = "2"
_COMPONENT_COLOUR = "36"
_LEVEL_COLOURS = {
    "TRACE": "2",
    "DEBUG": "2",
    "INFO": "32",
    "SUCCESS": "32",
    "WARNING": "33",
    "ERROR": "31",
    "CRITICAL": "1;31",
}


def component_of(module: str | None) -> str:
    """The short component name for a logger's module in this process.

    Everything under ``enclave_core.supervisor`` is ``supervisor``; other modules of the project
    and its plugins go by their last name (``forwarding``, ``process_launcher``), third parties by
    their package (``botocore``). ``runtime`` and ``app`` name the lines of those processes, so a
    runtime module running in another process (the supervisor shares its HTTP server) goes by its
    last name too.
    """
    parts = [part for part in (module or "").split(".") if part]
    if not parts:
        return "-"
    if parts[0] == "enclave_core" and len(parts) > 1:
        return "supervisor" if parts[1] == "supervisor" else parts[-1]
    if parts[0] in ("plugins", "enclave_plugins"):
        return parts[-1]
    return parts[0]


def render_record(record: Mapping[str, Any], *, colour: bool = False) -> str:
    """A loguru record of this process as one readable line."""
    entry = log_entry(record)  # the JSON line's entry: redacted, with the error of an exception
    return render_entry(
        entry, component=component_of(record.get("name")), when=record["time"], colour=colour
    )


def render_line(text: str, *, component: str = "runtime", colour: bool = False) -> str:
    """One output line of a child process as a readable line.

    A JSON log entry is rendered with ``component`` (or its ``source`` when that is ``app`` or
    ``log-channel``); any other text is shown as the app's, stamped with the time it is rendered.
    """
    entry = parse_entry(text)
    if entry is None:
        return _compose(datetime.now().astimezone(), "", TEXT_COMPONENT, text, {}, colour)
    return render_entry(entry, component=component, colour=colour)


def render_entry(
    entry: Mapping[str, Any],
    *,
    component: str = "runtime",
    when: datetime | None = None,
    colour: bool = False,
) -> str:
    """A JSON log entry (``time``, ``level``, ``msg`` and fields) as one readable line.

    :param component: shown unless the entry's ``source`` is one of :data:`SOURCES`.
    :param when: the entry's time when it is at hand; otherwise its ``time`` field is read.
    """
    fields = {key: value for key, value in entry.items() if key not in _COLUMNS}
    name = component
    if fields.get("source") in SOURCES:
        name = str(fields.pop("source"))
    if name == TEXT_COMPONENT:
        fields.pop("stream", None)  # stdout or stderr: the app's own lines need no label
    return _compose(
        when or _parse_time(entry.get("time")),
        str(entry.get("level") or "").upper(),
        name,
        str(entry.get("msg") or ""),
        fields,
        colour,
    )


def parse_entry(text: str) -> dict[str, Any] | None:
    """``text`` as a JSON log entry, or None when it is not a JSON object."""
    if not text.startswith("{"):
        return None
    try:
        entry = json.loads(text)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def shorten(text: str) -> str:
    """``text`` cut for display: an opaque value to 16 characters, anything to 240, plus ``…``."""
    if _is_opaque(text):
        return text[:SHORT_LEN] + _ELLIPSIS
    if len(text) > MAX_VALUE_LEN:
        return text[:MAX_VALUE_LEN] + _ELLIPSIS
    return text


def printable(text: str) -> str:
    """``text`` with control characters written as ``\\xNN`` escapes."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def format_fields(fields: Mapping[str, Any], *, colour: bool = False) -> str:
    """``key=value`` pairs, space-separated, without the fields the redaction masks or null ones.

    With ``colour`` the ``key=`` parts are dimmed, so the values stand out.
    """
    masked = redact(dict(fields))
    pairs = []
    for key, value in masked.items():
        if value is None or value == REDACTED:
            continue
        pairs.append(_paint(f"{printable(str(key))}=", _DIM, colour) + _show(value))
    return " ".join(pairs)


# ------------------------------------------------------------------ internals


def _compose(
    when: datetime | None,
    level: str,
    component: str,
    message: str,
    fields: Mapping[str, Any],
    colour: bool,
) -> str:
    stamp = (
        when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}" if when else "--:--:--.---"
    )
    parts = [
        _paint(stamp, _DIM, colour),
        _paint(f"{level:<{LEVEL_WIDTH}}", _LEVEL_COLOURS.get(level, ""), colour),
        _paint(f"{printable(component):<{COMPONENT_WIDTH}}", _COMPONENT_COLOUR, colour),
        printable(message),
    ]
    line = " ".join(parts).rstrip()
    shown = format_fields(fields, colour=colour)
    return f"{line}  {shown}" if shown else line


def _paint(text: str, code: str, colour: bool) -> str:
    if not colour or not code:
        return text
    return f"\x1b[{code}m{text}{_RESET}"


def _parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time in local time, or None when there is none to read."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).astimezone()
    except ValueError:
        return None


def _is_opaque(text: str) -> bool:
    """Whether ``text`` looks like a digest, a key or a blob rather than words or a path."""
    if len(text) <= SHORT_LEN + 8:
        return False
    if _HEX.fullmatch(text):
        return True
    return (
        len(text) >= 40
        and _BASE64.fullmatch(text) is not None
        and any(c.isdigit() for c in text)
        and any(c.islower() for c in text)
        and any(c.isupper() for c in text)
    )


def _show(value: Any) -> str:
    """One field value as shown after ``key=``: a text is quoted when it holds spaces, quotes or
    ``=``; a list or an object is shown as compact JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, (int, float, str)):
        compact = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
        return printable(shorten(compact))
    text = shorten(str(value))
    if not text or _NEEDS_QUOTES.search(text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return printable(text)
