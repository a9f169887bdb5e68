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
