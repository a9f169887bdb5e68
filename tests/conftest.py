"""Shared fixtures: no real AWS credentials, fresh configs on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enclave_core.config import Config
from enclave_core.testing import dev_config_document, write_config

REPO_ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.moto_server", "tests.kms_shim_server"]


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach AWS: fake credentials, no shared config, no IMDS."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Build a development config in a temporary folder: ``make_config(**overrides)``."""

    def factory(folder: Path | None = None, **overrides: Any) -> Config:
        return write_config(folder or tmp_path, dev_config_document(**overrides))

    return factory


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    """A temporary folder for real processes (`enclave dev`...); any left running are killed."""
    from tests.e2e.stack import processes_mentioning

    yield tmp_path
    for pid in processes_mentioning(str(tmp_path)):
        try:
            os.kill(pid, 9)
        except OSError:
            pass
