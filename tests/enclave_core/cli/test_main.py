"""The `enclave` App: error lines, --debug tracebacks, exit codes, `python -m`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import enclave_core
from enclave_core.cli.common import error_lines
from enclave_core.errors import BackendNotFound, ConfigError, EnclaveError, StateConflict
from tests.helpers import cli


def test_an_enclave_error_is_one_error_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "enclave.yaml"
    code, out, err = cli(capsys, "config", "validate", "-c", str(missing))
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"ERROR: {missing}: no such file (run 'enclave init' to create one)"
    ]


def test_debug_adds_the_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "enclave.yaml"
    code, _, err = cli(capsys, "--debug", "config", "validate", "-c", str(missing))
    assert code == 1
    assert "Traceback (most recent call last):" in err
    assert "enclave_core.errors.ConfigError" in err
    last = err.splitlines()[-1]
    assert last == f"ERROR: {missing}: no such file (run 'enclave init' to create one)"
    assert err.count("ERROR: ") == 1


def test_error_lines_for_each_kind_of_error() -> None:
    assert error_lines(EnclaveError("first line\nsecond line")) == ["ERROR: first line"]
    assert error_lines(StateConflict("enclave is already running")) == [
        "ERROR: enclave is already running"
    ]
    one = ConfigError("x.yaml is invalid:\nname: Missing data for required field.")
    assert error_lines(one) == ["ERROR: x.yaml is invalid: name: Missing data for required field."]
    several = ConfigError("x.yaml is invalid:\na.b: Unknown field.\nc: Not a valid integer.")
    assert error_lines(several) == [
        "ERROR: x.yaml is invalid:",
        "  a.b: Unknown field.",
        "  c: Not a valid integer.",
    ]
    assert error_lines(BackendNotFound("storage backend 'x' is not available")) == [
        "ERROR: storage backend 'x' is not available"
    ]
    assert error_lines(KeyError("boom")) == [
        "ERROR: KeyError: 'boom' (run with --debug for the traceback)"
    ]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "logs", "--lines", "many")
    assert code == 2
    assert "invalid int value" in err


def test_no_arguments_prints_help_with_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys)
    assert code == 0
    for command in (
        "init",
        "config validate",
        "config show",
        "plugin list",
        "dev",
        "runtime",
        "supervisor",
        "status",
        "start",
        "stop",
        "logs",
    ):
        assert f"\n  {command} " in out, command


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "enclave_core.cli.main", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert (result.returncode, result.stdout.strip()) == (0, f"enclave {enclave_core.__version__}")


def test_subprocess_error_has_no_traceback_unless_debug(tmp_path: Path) -> None:
    (tmp_path / "enclave.yaml").write_text("name: [unclosed\n")
    base = [sys.executable, "-m", "enclave_core.cli.main"]
    plain = subprocess.run(
        [*base, "config", "show"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert plain.returncode == 1
    assert plain.stdout == ""
    assert len(plain.stderr.splitlines()) == 1
    assert plain.stderr.startswith(f"ERROR: {tmp_path / 'enclave.yaml'}: malformed YAML at line")
    debug = subprocess.run(
        [*base, "--debug", "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert debug.returncode == 1
    assert "Traceback (most recent call last):" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip()


def test_log_file_gets_the_json_lines(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    (tmp_path / "enclave.yaml").write_text("name: hello\n")
    args = ["--debug", "--log-file", str(log), "config", "validate"]
    code, out, _ = cli(capsys, *args, "-c", str(tmp_path / "enclave.yaml"))
    assert code == 0 and out.startswith("OK: ")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"time", "level", "msg"} <= set(records[0])
    assert "plugins loaded" in [record["msg"] for record in records]
