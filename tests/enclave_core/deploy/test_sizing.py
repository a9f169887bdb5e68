"""Sizing checks (enclave_core/deploy/sizing.py), instance data, and `enclave config validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enclave_core.cli.main import main
from enclave_core.config import Config, parse_config
from enclave_core.deploy.instance_types import FAMILIES, INSTANCE_TYPES, lookup
from enclave_core.deploy.sizing import check, enforced, host_memory_floor

BRIEF_FAMILIES = (
    "m5 m5a m5n m5zn m6i m6a m6in m7i m7a c5 c5a c5n c6i c6a c6in c7i c7a r5 r5a r5n r6i r6a "
    "r7i r7a m6g c6g r6g m7g c7g r7g"
).split()


def parsed(**values: Any) -> Config:
    return parse_config({"name": "hello", **values}, base_dir=Path("/tmp"))


def test_the_defaults_fit() -> None:
    assert check(parsed()) == []  # m6i.xlarge, 2 vCPUs, 4096 MiB


def test_an_enclave_taking_every_vcpu_is_reported_with_the_instance_figures() -> None:
    assert check(parsed(instance_type="m5.xlarge", enclave={"cpu_count": 4})) == [
        "m5.xlarge has 4 vCPUs and 16384 MiB: enclave.cpu_count 4 leaves 0 for the host (needs ≥ 2)"
    ]


def test_cpu_count_must_be_whole_cores() -> None:
    assert check(parsed(instance_type="c6i.2xlarge", enclave={"cpu_count": 3})) == [
        "c6i.2xlarge has 8 vCPUs and 16384 MiB: enclave.cpu_count 3 is not a multiple of 2, "
        "its threads per core (an enclave takes whole cores)"
    ]
    # One thread per core: Graviton and 7th-generation AMD take any count.
    assert check(parsed(instance_type="m7g.2xlarge", enclave={"cpu_count": 3})) == []
    assert check(parsed(instance_type="c7a.xlarge", enclave={"cpu_count": 1})) == []


def test_memory_must_leave_the_host_1024_mib_plus_ten_percent() -> None:
    instance = lookup("m6i.xlarge")
    assert instance is not None and host_memory_floor(instance) == 1024 + 1638
    assert check(parsed(enclave={"memory_mib": 16384 - 2662})) == []
    assert check(parsed(enclave={"memory_mib": 16384 - 2661})) == [
        "m6i.xlarge has 4 vCPUs and 16384 MiB: enclave.memory_mib 13723 leaves 2661 MiB for the "
        "host (needs ≥ 2662: 1024 MiB + 10% of 16384); at most 13722 MiB fits"
    ]


def test_every_problem_is_reported_at_once() -> None:
    problems = check(
        parsed(instance_type="c5.xlarge", enclave={"cpu_count": 5, "memory_mib": 9000})
    )
    assert len(problems) == 3


def test_unknown_types_name_the_families_or_the_family_sizes() -> None:
    (unknown,) = check(parsed(instance_type="t3.large"))
    assert unknown.startswith("instance_type t3.large is not a Nitro Enclaves instance type")
    assert all(family in unknown for family in ("m5", "c6i", "r7g"))
    (small,) = check(parsed(instance_type="m6i.large"))
    assert small == (
        "instance_type m6i.large: the m6i family runs Nitro Enclaves, but not as large here; "
        "sizes: xlarge, 2xlarge, 4xlarge, 8xlarge, 12xlarge, 16xlarge, 24xlarge, 32xlarge (an "
        "enclave needs ≥ 4 vCPUs on x86 and room for the host)"
    )
    assert check(parsed(instance_type="m5.metal"))[0].startswith("instance_type m5.metal: the m5")


def test_the_instance_data() -> None:
    assert sorted(FAMILIES) == sorted(BRIEF_FAMILIES)
    figures = {
        "m5.xlarge": (4, 16384, 2),
        "m5zn.3xlarge": (12, 49152, 2),
        "c5.9xlarge": (36, 73728, 2),
        "c5n.xlarge": (4, 10752, 2),
        "c5n.9xlarge": (36, 98304, 2),
        "r6i.32xlarge": (128, 1048576, 2),
        "m6a.48xlarge": (192, 786432, 2),
        "m7a.xlarge": (4, 16384, 1),
        "c7g.16xlarge": (64, 131072, 1),
        "r7i.48xlarge": (192, 1572864, 2),
    }
    for name, expected in figures.items():
        instance = INSTANCE_TYPES[name]
        assert (instance.vcpus, instance.memory_mib, instance.threads_per_core) == expected, name
    graviton = lookup("M6G.XLARGE")
    assert graviton is not None and graviton.architecture == "arm64"
    assert all(t.vcpus >= 4 and "metal" not in t.name for t in INSTANCE_TYPES.values())


def test_sizing_is_enforced_for_production_or_an_account() -> None:
    assert not enforced(parsed())
    assert enforced(parsed(account="123456789012"))


def write(folder: Path, text: str) -> Path:
    path = folder / "enclave.yaml"
    path.write_text(text)
    return path


def test_config_validate_warns_in_development_and_fails_for_a_deployment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "name: hello\ninstance_type: m5.xlarge\nenclave: {cpu_count: 4}\n")
    problem = (
        "m5.xlarge has 4 vCPUs and 16384 MiB: enclave.cpu_count 4 leaves 0 for the host (needs ≥ 2)"
    )
    assert main(["config", "validate", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (f"OK: {path}\n", f"warning: {problem}\n")
    path.write_text(path.read_text() + 'account: "123456789012"\n')
    assert main(["config", "validate", "-c", str(path)]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"ERROR: {path} is invalid: {problem}\n")
