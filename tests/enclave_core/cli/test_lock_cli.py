"""`enclave lock` as a user runs it: offline digest, real pip resolution, a second run's diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave_core.config import Config
from tests.helpers import build_project_wheel, cli

DIGEST = "sha256:" + "5e" * 32


def test_lock_writes_the_file_and_a_second_run_says_what_changed(
    capsys: pytest.CaptureFixture[str], app_config: Config
) -> None:
    wheels = app_config.base_dir / "artifacts" / "wheels"
    build_project_wheel(wheels)
    argv = ["lock", "--base-digest", DIGEST, "--source-date-epoch", "1700000000"]
    code, out, err = cli(capsys, *argv, "-c", str(app_config.path))
    assert code == 0, err
    lock = json.loads((app_config.base_dir / "enclave.lock").read_text())
    assert lock["base_digest"] == DIGEST and lock["source_date_epoch"] == 1700000000
    assert (
        f"wrote {app_config.base_dir / 'enclave.lock'}: python:3.11-slim-bookworm@{DIGEST}" in out
    )
    (app_config.app_dir / "requirements.txt").write_text("six==1.16.0\n")
    code, out, _ = cli(capsys, *argv, "-c", str(app_config.path))
    assert code == 0
    assert "  + six-1.16.0-py2.py3-none-any.whl" in out.splitlines()


def test_a_malformed_digest_is_refused(
    capsys: pytest.CaptureFixture[str], app_config: Config
) -> None:
    code, _, err = cli(capsys, "lock", "--base-digest", "latest", "-c", str(app_config.path))
    assert (code, err) == (
        1,
        "ERROR: --base-digest must be sha256: and 64 lower-case hex digits\n",
    )
    assert not (Path(app_config.base_dir) / "enclave.lock").exists()
