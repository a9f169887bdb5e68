"""`enclave plugin list`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from enclave_core.cli.main import main
from enclave_core.config import Config

BUILT_IN = {
    ("storage", "local", "local-storage"),
    ("secrets", "local", "local-secrets"),
    ("kms", "local", "local-kms"),
    ("attestation", "simulated", "simulated-attestation"),
    ("launcher", "process", "process-launcher"),
}


def rows(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, str]]:
    code = main(["plugin", "list", "-f", "json", *args])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    result: list[dict[str, str]] = json.loads(out)
    return result


def test_lists_the_five_built_in_backends(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no enclave.yaml here: nothing is disabled
    listed = rows(capsys)
    assert all(
        set(row) == {"capability", "name", "plugin", "distribution", "version"} for row in listed
    )
    built_in = {
        (row["capability"], row["name"], row["plugin"])
        for row in listed
        if row["distribution"] == "simple-enclave"
    }
    assert built_in >= BUILT_IN
    assert {row["version"] for row in listed if row["distribution"] == "simple-enclave"} == {
        "0.1.0"
    }


def test_honours_plugins_disable_in_the_config(
    capsys: pytest.CaptureFixture[str], make_config: Callable[..., Config]
) -> None:
    config = make_config(plugins={"disable": ["simulated-attestation"]})
    listed = {(row["capability"], row["name"]) for row in rows(capsys, "-c", str(config.path))}
    assert ("attestation", "simulated") not in listed
    assert ("storage", "local") in listed


def test_table_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["plugin", "list", "-c", str(tmp_path / "absent.yaml")])
    out, _ = capsys.readouterr()
    assert code == 0
    header = out.splitlines()[1]
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "capability",
        "name",
        "plugin",
        "distribution",
        "version",
    ]
    assert "| launcher    | process   | process-launcher" in out


def test_trace_plugins_writes_hook_calls_to_stderr(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENCLAVE_TRACE_PLUGINS", "1")
    code = main(["plugin", "list", "-f", "json"])
    out, err = capsys.readouterr()
    assert code == 0
    assert {row["name"] for row in json.loads(out)} >= {"local", "process"}
    traced = [line for line in err.splitlines() if line.startswith("[enclave plugin trace] ")]
    assert len(traced) == 10  # five registration hooks, a line before and after each
    assert any(
        "enclave_register_launcher(registry=<launcher registry>) implementations" in line
        and "process-launcher" in line
        for line in traced
    )
    assert any(
        line.startswith("[enclave plugin trace] enclave_register_kms done in ") for line in traced
    )


def test_a_plugin_that_fails_to_load_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "site" / "broken_cli_dist-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-cli-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[enclave]\nbroken-cli = broken_cli_plugin_mod\n")
    (tmp_path / "site" / "broken_cli_plugin_mod.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.chdir(tmp_path)
    code = main(["plugin", "list"])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "ERROR: plugin 'broken-cli' (broken_cli_plugin_mod) failed to load: "
        "ZeroDivisionError: division by zero"
    ]
