"""Shared fixtures: no real AWS credentials, fresh configs on free loopback ports, and the
``config``, ``state_dir``, ``nsm`` and ``kms`` that tests in several folders take."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from enclave_plugins.local_kms import LocalKms
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.config import Config
from enclave_core.testing import dev_config_document, write_config

pytest_plugins = ["tests.services.moto_server", "tests.services.kms_shim_server"]


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


@pytest.fixture
def config(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    """A development config in ``tmp_path`` with defaults, and a one-line ``app.py`` beside it."""
    (tmp_path / "app.py").write_text("print('v1')\n")
    return make_config()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """``tmp_path/.enclave``, for an app folder ``tmp_path/app`` holding a one-line ``app.py``."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text("print('hello')\n")
    return tmp_path / ".enclave"


@pytest.fixture
def nsm(tmp_path: Path, state_dir: Path) -> SimulatedNsm:
    """The simulated NSM over ``tmp_path/app``, its development CA in ``state_dir``."""
    return SimulatedNsm(state_dir=state_dir, app_dir=tmp_path / "app")


@pytest.fixture
def kms(state_dir: Path) -> LocalKms:
    """The local KMS in ``state_dir/kms``, trusting the simulated NSM's root (``dev-root.pem``)."""
    return LocalKms(state_dir / "kms", root_pem=state_dir / "dev-root.pem")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """An RSA-2048 private key, as the runtime makes one per boot for KMS ``Recipient``."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
