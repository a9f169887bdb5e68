"""The launch spec: what the supervisor asks the launcher to start."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave_core.cli.main import main
from enclave_core.config import load_config
from enclave_core.supervisor.service import DEFAULTS_ENV, launch_spec


def test_spec_follows_the_config(tmp_path: Path) -> None:
    (tmp_path / "enclave.yaml").write_text("name: hello\nenclave: {cpu_count: 4, cid: 20}\n")
    spec = launch_spec(load_config(tmp_path / "enclave.yaml"))
    assert spec.config_path == tmp_path / "enclave.yaml"
    assert (spec.cpu_count, spec.cid, spec.memory_mib, spec.name) == (4, 20, 4096, "hello")
    assert spec.eif == tmp_path / "artifacts" / "image.eif"
    assert DEFAULTS_ENV not in spec.env


def test_without_a_file_the_runtime_is_told_to_use_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = launch_spec(load_config(tmp_path / "enclave.yaml", allow_missing=True))
    assert spec.env == {DEFAULTS_ENV: "1"}
    # Without that variable, `enclave runtime` refuses a missing file with one clear line.
    monkeypatch.delenv(DEFAULTS_ENV, raising=False)
    assert main(["runtime", "-c", str(tmp_path / "enclave.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err
