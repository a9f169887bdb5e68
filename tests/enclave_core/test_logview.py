"""Readable log lines: the formatter, the choice between it and JSON, colour only on a terminal."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime

import pytest
from loguru import logger

from enclave_core.log import configure_logging, human_for, render_echoed
from enclave_core.logview import component_of, render_line, shorten

PCR0 = "ab12" * 24
TIME = "2026-01-01T10:00:00.250+00:00"


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


pytestmark = pytest.mark.usefixtures("restore_logging")


def clock(iso: str = TIME) -> str:
    """HH:MM:SS.mmm of ``iso`` in local time, as readable lines show it."""
    when = datetime.fromisoformat(iso).astimezone()
    return when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def uncoloured(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def line(msg: str, level: str = "INFO", **fields: object) -> str:
    return json.dumps({"time": TIME, "level": level, "msg": msg, **fields})


def test_a_json_line_becomes_one_readable_line_with_its_fields() -> None:
    text = line(
        "restarting enclave",
        "WARNING",
        delay_s=2.0,
        reason="runtime exited with code 1",
        pcr0=PCR0,
        restarts=1,
        signal=None,
        ok=True,
        generated=["signing_key"],
    )
    assert render_line(text) == (
        f'{clock()} WARNING runtime    restarting enclave  delay_s=2.0 reason="runtime exited '
        f'with code 1" pcr0={PCR0[:16]}… restarts=1 ok=true generated=["signing_key"]'
    )


def test_app_lines_and_plain_text_are_the_apps() -> None:
    app = line("GET / HTTP/1.1 200", source="app", stream="stdout")
    assert render_line(app) == f"{clock()} INFO    app        GET / HTTP/1.1 200"
    # Not JSON: the app's text, stamped now, its control characters escaped.
    shown = render_line("plain \x1b[31mred\x1b[0m {not json")
    stamp, rest = shown[:12], shown[12:]
    datetime.strptime(stamp, "%H:%M:%S.%f")
    assert rest == " " * 9 + "app        plain \\x1b[31mred\\x1b[0m {not json"
    # Another ``source`` is an ordinary field, not who wrote the line.
    assert render_line(line("snapshot taken", source="/src/app")).endswith(
        "runtime    snapshot taken  source=/src/app"
    )
    # A JSON message is shown without its control characters too.
    assert render_line(line("a\x07b\x9bc")).endswith("runtime    a\\x07b\\x9bc")


def test_fields_the_redaction_masks_are_not_shown() -> None:
    text = line(
        "secret loaded",
        secret="signing_key",
        token="tok-123",
        secret_value="s3cr3t",
        data_key="ZGVr",
        app_password="pw-9",
        value="v-1",
        dek="[redacted]",  # masked already by the process that wrote the line
    )
    shown = render_line(text)
    assert shown == f"{clock()} INFO    runtime    secret loaded  secret=signing_key"
    # The supervisor's own records go through the same redaction.
    stream = io.StringIO()
    configure_logging("INFO", human=True, stream=stream)
    logger.bind(token="tok-456", key_id="k-1").info("key used", plaintext="hello")
    out = stream.getvalue()
    assert "key used  key_id=k-1" in out
    for hidden in ("tok-456", "token", "hello", "plaintext", "[redacted]"):
        assert hidden not in out


def test_long_opaque_values_are_shortened_and_prose_is_kept() -> None:
    assert shorten(PCR0) == PCR0[:16] + "…"
    blob = "QmFzZTY0IGJsb2IgdGhhdCBpcyBsb25nIGVub3VnaCB0byBjdXQ="
    assert shorten(blob) == blob[:16] + "…"
    prose = "KMS key k-1 is locked to PCR0 " + PCR0
    assert shorten(prose) == prose
    path = "/home/dev/projects/hello/.enclave/logs/runtime.log"
    assert shorten(path) == path
    assert shorten("x " * 200) == ("x " * 200)[:240] + "…"
    assert shorten("deadbeef") == "deadbeef"


def test_component_is_supervisor_runtime_or_the_module_in_short() -> None:
    assert component_of("enclave_core.supervisor.watchdog") == "supervisor"
    assert component_of("enclave_core.http.connection") == "connection"  # in another process
    assert component_of("enclave_plugins.process_launcher") == "process_launcher"
    assert component_of("enclave_core.streams.splice") == "splice"
    assert component_of("botocore.credentials") == "botocore"
    assert component_of(None) == "-"
    stream = io.StringIO()
    configure_logging("INFO", human=True, stream=stream)
    logger.info("here")
    assert stream.getvalue().split()[2] == "tests"  # this module's package


def test_an_exception_is_shown_as_its_error_field() -> None:
    stream = io.StringIO()
    configure_logging("INFO", human=True, stream=stream)
    try:
        raise ValueError("bad input")
    except ValueError:
        logger.exception("check failed")
    assert stream.getvalue().rstrip("\n").endswith('check failed  error="ValueError: bad input"')


@pytest.mark.parametrize(
    ("log_format", "terminal", "readable"),
    [
        ("auto", True, True),
        ("auto", False, False),
        ("text", False, True),
        ("text", True, True),
        ("json", True, False),
        ("json", False, False),
    ],
)
def test_the_sink_chosen_for_each_format_and_stream(
    log_format: str, terminal: bool, readable: bool
) -> None:
    stream = Terminal() if terminal else io.StringIO()
    configure_logging("INFO", human=human_for(log_format), stream=stream)
    logger.bind(stage="kms").info("booting")
    out = stream.getvalue().rstrip("\n")
    echoed = render_echoed(line("from the runtime", key_id="k-1"))
    if readable:
        assert ("\x1b[" in out) == terminal  # colour only on a terminal
        assert ("\x1b[" in echoed) == terminal
        assert "booting  stage=kms" in uncoloured(out)
        assert uncoloured(echoed).endswith("runtime    from the runtime  key_id=k-1")
    else:
        entry = json.loads(out)
        assert (entry["msg"], entry["stage"]) == ("booting", "kms")
        assert echoed == line("from the runtime", key_id="k-1")  # as the runtime wrote it


def test_no_color_turns_colours_off_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    stream = Terminal()
    configure_logging("INFO", human=None, stream=stream)
    logger.info("plain")
    assert "plain" in stream.getvalue() and "\x1b[" not in stream.getvalue()


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, text, json"):
        human_for("pretty")
