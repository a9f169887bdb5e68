"""Sizing checks: does the enclave fit on ``instance_type`` and leave the host enough?

Run by ``enclave config validate`` (errors when the file is meant for a deployment, warnings
otherwise) and by ``enclave deploy`` step 1 (always errors): a known Nitro Enclaves type
(:mod:`enclave_core.deploy.instance_types`), ``enclave.cpu_count`` in whole cores leaving
:data:`HOST_MIN_VCPUS`, and ``memory_mib`` leaving :data:`HOST_MIN_MEMORY_MIB` plus
:data:`HOST_MEMORY_SHARE`. Why these margins: docs/architecture.md, "Building and deploying".
"""

from __future__ import annotations

from enclave_core.config import Config
from enclave_core.deploy.instance_types import FAMILIES, InstanceType, lookup, sizes_of

#: vCPUs the host keeps for itself, at least.
HOST_MIN_VCPUS = 2
#: MiB the host keeps for the OS, the supervisor and the SSM agent, at least...
HOST_MIN_MEMORY_MIB = 1024
#: ...plus this share of the instance's memory.
HOST_MEMORY_SHARE = 0.10


def host_memory_floor(instance: InstanceType) -> int:
    """The MiB the host must keep on ``instance``: 1024 MiB plus 10 % of its memory."""
    return HOST_MIN_MEMORY_MIB + int(instance.memory_mib * HOST_MEMORY_SHARE)


def enforced(config: Config) -> bool:
    """Whether sizing problems are errors for ``config validate``: production or an account set."""
    return config.mode == "production" or config.account is not None


def check(config: Config) -> list[str]:
    """Every sizing problem of ``config``, one readable line each; empty when it fits."""
    name = config.instance_type
    instance = lookup(name)
    if instance is None:
        return [_unknown(name)]
    figures = f"{instance.name} has {instance.vcpus} vCPUs and {instance.memory_mib} MiB"
    cpus, memory = config.enclave.cpu_count, config.enclave.memory_mib
    problems = []
    if cpus % instance.threads_per_core:
        problems.append(
            f"{figures}: enclave.cpu_count {cpus} is not a multiple of "
            f"{instance.threads_per_core}, its threads per core (an enclave takes whole cores)"
        )
    left = instance.vcpus - cpus
    if left < HOST_MIN_VCPUS:
        problems.append(
            f"{figures}: enclave.cpu_count {cpus} leaves {max(left, 0)} for the host "
            f"(needs ≥ {HOST_MIN_VCPUS})"
        )
    floor = host_memory_floor(instance)
    left_mib = instance.memory_mib - memory
    if left_mib < floor:
        problems.append(
            f"{figures}: enclave.memory_mib {memory} leaves {max(left_mib, 0)} MiB for the host "
            f"(needs ≥ {floor}: {HOST_MIN_MEMORY_MIB} MiB + {HOST_MEMORY_SHARE:.0%} of "
            f"{instance.memory_mib}); at most {instance.memory_mib - floor} MiB fits"
        )
    return problems


def _unknown(name: str) -> str:
    family, _, size = name.strip().lower().partition(".")
    known = sizes_of(family)
    if known:
        return (
            f"instance_type {name}: the {family} family runs Nitro Enclaves, but not as "
            f"{size or '(no size)'} here; sizes: {', '.join(known)} (an enclave needs ≥ 4 vCPUs "
            "on x86 and room for the host)"
        )
    return (
        f"instance_type {name} is not a Nitro Enclaves instance type known here; families: "
        f"{', '.join(FAMILIES)} (sizes xlarge and up)"
    )
