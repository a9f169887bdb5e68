"""Sizing checks: does the enclave fit on ``instance_type`` and leave the host enough?

Checked before anything is created (``enclave deploy`` step 1) and by ``enclave config
validate``:

- ``instance_type`` must be a Nitro Enclaves type we know
(:mod:`enclave_core.deploy.instance_types`);
  an unknown one is reported with the list of families.
- ``enclave.cpu_count`` must be a multiple of the type's threads per core: an enclave takes
  whole physical cores (2 vCPUs per core with hyper-threading on Intel and older AMD, 1 on
  Graviton and m7a/c7a/r7a), and it must leave the host at least :data:`HOST_MIN_VCPUS` vCPUs.
  AWS's own floor is one core (2 vCPUs with hyper-threading, 1 without); we keep 2 everywhere
  so the supervisor, its forwarders and the SSM agent are never starved.
- ``enclave.memory_mib`` must leave the host :data:`HOST_MIN_MEMORY_MIB` plus
  :data:`HOST_MEMORY_SHARE` of the instance's memory: the OS, the supervisor and the SSM agent
  need the first; the kernel and the hypervisor take part of the nominal memory, and the
  allocator needs slack to find the enclave's hugepages.

``enclave config validate`` always reports these problems; they are errors when
``mode: production`` or ``account`` is set (the file is meant for a deployment) and warnings
otherwise (development runs locally, where instance_type does not matter). ``enclave deploy``
always treats them as errors.

Scaling vertically: change ``instance_type`` (and ``enclave.cpu_count``/``memory_mib`` to use
the new room) in enclave.yaml and run ``enclave deploy`` again. The checks run first, the stack
update replaces or resizes the instance, and the enclave is started again with the same EIF, key
and secrets (PCR0 does not depend on the instance type).
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
