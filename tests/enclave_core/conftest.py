"""Fixtures the tests of several enclave_core folders share (cli/, deploy/, image/, streams/,
supervisor/)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loguru import logger

from enclave_core import log
from enclave_core.config import Config
from tests.doubles.host_tools import FAKES
from tests.doubles.stubbed_aws import OUTPUTS
from tests.helpers import LoopThread


@pytest.fixture
def app_config(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    """A development config in ``tmp_path/app`` with a one-line ``app.py``: unlike ``config``,
    the app folder leaves ``tmp_path`` free for what must stay outside it (state, new images)."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text("print('v1')\n")
    return make_config(tmp_path / "app")


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake docker and nitro-cli first on PATH, their state in ``tmp_path/state``."""
    state = tmp_path / "state"
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state / "docker.json"))
    monkeypatch.setenv("FAKE_NITRO_CLI_STATE", str(state / "nitro-cli.json"))
    monkeypatch.setenv("NITRO_CLI_LOGS_PATH", str(state / "nitro-logs"))
    return state


@pytest.fixture
def fake_cdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake cdk first on PATH, answering a deploy with :data:`OUTPUTS`; its state file (calls,
    stacks: read the calls with :func:`~tests.doubles.host_tools.cdk_calls`)."""
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    state = tmp_path / "fake-cdk.json"
    monkeypatch.setenv("FAKE_CDK_STATE", str(state))
    monkeypatch.setenv("FAKE_CDK_OUTPUTS", json.dumps(OUTPUTS))
    return state


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    """An asyncio loop in a thread for the test's servers; closed afterwards."""
    runner = LoopThread()
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test installs its own sinks; none outlives it, nor its view of echoed lines."""
    monkeypatch.setattr(log, "_echo_view", log._echo_view)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    yield
    logger.remove()
