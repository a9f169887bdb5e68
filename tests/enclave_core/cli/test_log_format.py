"""`enclave dev --log-format auto|text|json`: the stderr sink it installs, for a terminal or not.

`enclave dev` with a backend that does not exist stops at its config check, after the option was
applied: what the sinks then do with a log line and an echoed runtime line shows the choice.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from loguru import logger

from enclave_core import log
from enclave_core.cli.main import main
from enclave_core.testing import dev_config_document

RUNTIME_LINE = json.dumps(
    {"time": "2026-01-01T10:00:00.250+00:00", "level": "INFO", "msg": "ready", "stage": "done"}
)


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    """An enclave.yaml that `enclave dev` refuses before starting anything."""
    path = tmp_path / "enclave.yaml"
    path.write_text(yaml.safe_dump(dev_config_document(launcher={"backend": "firecracker"})))
    return path


def dev_then_log(stderr: io.StringIO, *args: str) -> tuple[str, str]:
    """Run `enclave dev ARGS` (it fails on its config), then log one line and echo one runtime
    line through what it installed; return what stderr got after the error, and the echo."""
    code = main(["dev", *args])
    assert code == 1 and "ERROR: " in stderr.getvalue()
    start = len(stderr.getvalue())
    logger.bind(pid=7).warning("after dev")
    return stderr.getvalue()[start:], log.render_echoed(RUNTIME_LINE)


@pytest.mark.parametrize(
    ("terminal", "args", "readable"),
    [
        (True, [], True),
        (False, [], False),
        (True, ["--log-format", "auto"], True),
        (False, ["--log-format", "text"], True),
        (True, ["--log-format", "json"], False),
        (False, ["--log-format", "json"], False),
    ],
)
def test_log_format_picks_the_sink_for_a_terminal_or_not(
    monkeypatch: pytest.MonkeyPatch,
    bad_config: Path,
    terminal: bool,
    args: list[str],
    readable: bool,
) -> None:
    stderr = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    logged, echoed = dev_then_log(stderr, "-c", str(bad_config), *args)
    if readable:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", logged)
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} WARNING \S+ +after dev  pid=7\n", plain)
        assert re.sub(r"\x1b\[[0-9;]*m", "", echoed).endswith("runtime    ready  stage=done")
        assert ("\x1b[" in logged) == terminal  # colour only on a terminal
    else:
        entry = json.loads(logged)
        assert (entry["level"], entry["msg"], entry["pid"]) == ("WARNING", "after dev", 7)
        assert echoed == RUNTIME_LINE


def test_an_unknown_log_format_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], bad_config: Path
) -> None:
    assert main(["dev", "-c", str(bad_config), "--log-format", "pretty"]) == 2
    assert "invalid choice: 'pretty'" in capsys.readouterr().err


def test_the_log_file_keeps_json_lines_with_text_on_stderr(
    monkeypatch: pytest.MonkeyPatch, bad_config: Path, tmp_path: Path
) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    path = tmp_path / "cli.log"
    main(["--debug", "--log-file", str(path), "dev", "-c", str(bad_config), "--log-format", "text"])
    logger.warning("after dev")
    logger.remove()  # closes nothing: the file sink was removed when the command ended
    records = [json.loads(text) for text in path.read_text().splitlines()]
    messages = [record["msg"] for record in records]
    assert messages.count("plugins loaded") == 1  # one file sink, not one per installation
    assert "after dev" not in messages
    assert "plugins loaded" in stderr.getvalue() and '"msg"' not in stderr.getvalue()
