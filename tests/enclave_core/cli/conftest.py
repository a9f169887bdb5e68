"""Fixtures the CLI tests share: a stand-in management API and a config that points at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from enclave_core.config import Config
from tests.doubles.fake_supervisor import TOKEN, FakeSupervisor, config_for, running_supervisor


@pytest.fixture
def fake_supervisor() -> Iterator[FakeSupervisor]:
    """A running :class:`~tests.doubles.fake_supervisor.FakeSupervisor`."""
    with running_supervisor() as fake:
        yield fake


@pytest.fixture
def supervised_config(
    make_config: Callable[..., Config], fake_supervisor: FakeSupervisor
) -> Config:
    """A development config whose supervisor is ``fake_supervisor``, :data:`TOKEN` its token."""
    return config_for(make_config, fake_supervisor, TOKEN)
