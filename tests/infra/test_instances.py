"""The instance figures the CDK app reads (the table is enclave_core.deploy.instance_types)."""

from __future__ import annotations

import pytest
from enclave_infra.instances import enclave_instance

from enclave_core.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "architecture", "vcpus", "memory_mib"),
    [
        ("m6i.xlarge", "x86_64", 4, 16384),
        ("c5n.9xlarge", "x86_64", 36, 98304),
        ("r7g.2xlarge", "arm64", 8, 65536),
        (" M5.XLARGE ", "x86_64", 4, 16384),
    ],
)
def test_known_types_have_their_figures(
    name: str, architecture: str, vcpus: int, memory_mib: int
) -> None:
    found = enclave_instance(name)
    assert (found.architecture, found.vcpus, found.memory_mib) == (architecture, vcpus, memory_mib)


@pytest.mark.parametrize("name", ["t3.xlarge", "m6i.large", "m6i.metal", "m6i"])
def test_types_without_enclaves_are_refused_naming_the_families(name: str) -> None:
    with pytest.raises(ConfigError, match=r"not a Nitro Enclaves instance type .*m6i"):
        enclave_instance(name)
