"""Session fixtures: each stack is synthesized once (with cdk-nag) for every infra test."""

from __future__ import annotations

import pytest

from tests.infra.synthesis import Synthesized, synthesize_checked, write_production_config

#: The scaled-out deployment's ingress: one port reaching runtime.port, one other.
SCALED_INGRESS = [
    {"listen": "0.0.0.0:443", "port": 7073},  # reaches runtime.port: health-checked on /health
    {"listen": "0.0.0.0:9443", "port": 9000},  # another enclave port: TCP health check
]


@pytest.fixture(scope="session")
def single(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """The production stack with one host (m6i.xlarge, eu-west-1)."""
    folder = tmp_path_factory.mktemp("single")
    config = write_production_config(folder / "app")
    return synthesize_checked(config, folder / "cdk.out")


@pytest.fixture(scope="session")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """The production stack with ``instances: 3`` Graviton hosts and two ingress ports."""
    folder = tmp_path_factory.mktemp("scaled")
    config = write_production_config(
        folder / "app",
        instances=3,
        instance_type="c7g.2xlarge",
        supervisor={"ingress": SCALED_INGRESS},
    )
    return synthesize_checked(config, folder / "cdk.out")
