"""The EC2 instance types that can run a Nitro Enclave, with their vCPUs and memory (data only).

Plain Python data, importable without aws-cdk-lib (``enclave config validate`` and the CDK app
both read it): virtualized Nitro sizes of at least 4 vCPUs, AWS's published vCPUs and memory in
MiB, and ``threads_per_core`` (an enclave takes whole cores). A missing type may still work on
AWS; the sizing check then says it does not know it (docs/architecture.md, "Building and
deploying").
"""

from __future__ import annotations

from dataclasses import dataclass

#: vCPUs of each size name.
_SIZE_VCPUS = {
    "xlarge": 4,
    "2xlarge": 8,
    "3xlarge": 12,
    "4xlarge": 16,
    "6xlarge": 24,
    "8xlarge": 32,
    "9xlarge": 36,
    "12xlarge": 48,
    "16xlarge": 64,
    "18xlarge": 72,
    "24xlarge": 96,
    "32xlarge": 128,
    "48xlarge": 192,
}
_COMMON = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge")
_TO_32 = (*_COMMON, "32xlarge")
_TO_48 = (*_COMMON, "32xlarge", "48xlarge")
_GEN7_INTEL = (*_COMMON, "48xlarge")
_GRAVITON = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")
_C5 = ("xlarge", "2xlarge", "4xlarge", "9xlarge", "12xlarge", "18xlarge", "24xlarge")

#: family: (architecture, threads per core, GiB of memory per vCPU, sizes).
_FAMILIES: dict[str, tuple[str, int, float, tuple[str, ...]]] = {
    # general purpose
    "m5": ("x86_64", 2, 4, _COMMON),
    "m5a": ("x86_64", 2, 4, _COMMON),
    "m5n": ("x86_64", 2, 4, _COMMON),
    "m5zn": ("x86_64", 2, 4, ("xlarge", "2xlarge", "3xlarge", "6xlarge", "12xlarge")),
    "m6i": ("x86_64", 2, 4, _TO_32),
    "m6a": ("x86_64", 2, 4, _TO_48),
    "m6in": ("x86_64", 2, 4, _TO_32),
    "m7i": ("x86_64", 2, 4, _GEN7_INTEL),
    "m7a": ("x86_64", 1, 4, _TO_48),
    "m6g": ("arm64", 1, 4, _GRAVITON),
    "m7g": ("arm64", 1, 4, _GRAVITON),
    # compute optimized
    "c5": ("x86_64", 2, 2, _C5),
    "c5a": ("x86_64", 2, 2, _COMMON),
    "c5n": ("x86_64", 2, 2.625, ("xlarge", "2xlarge", "4xlarge", "9xlarge", "18xlarge")),
    "c6i": ("x86_64", 2, 2, _TO_32),
    "c6a": ("x86_64", 2, 2, _TO_48),
    "c6in": ("x86_64", 2, 2, _TO_32),
    "c7i": ("x86_64", 2, 2, _GEN7_INTEL),
    "c7a": ("x86_64", 1, 2, _TO_48),
    "c6g": ("arm64", 1, 2, _GRAVITON),
    "c7g": ("arm64", 1, 2, _GRAVITON),
    # memory optimized
    "r5": ("x86_64", 2, 8, _COMMON),
    "r5a": ("x86_64", 2, 8, _COMMON),
    "r5n": ("x86_64", 2, 8, _COMMON),
    "r6i": ("x86_64", 2, 8, _TO_32),
    "r6a": ("x86_64", 2, 8, _TO_48),
    "r7i": ("x86_64", 2, 8, _GEN7_INTEL),
    "r7a": ("x86_64", 1, 8, _TO_48),
    "r6g": ("arm64", 1, 8, _GRAVITON),
    "r7g": ("arm64", 1, 8, _GRAVITON),
}
#: Sizes whose memory is not vCPUs x the family's ratio (c5n: 10.5 GiB per 4 vCPUs, but 96 GiB
#: for 36 vCPUs and 192 GiB for 72).
_MEMORY_GIB_EXCEPTIONS = {"c5n.9xlarge": 96, "c5n.18xlarge": 192}


@dataclass(frozen=True)
class InstanceType:
    """One Nitro Enclaves-capable instance type."""

    name: str
    family: str
    vcpus: int
    memory_mib: int
    threads_per_core: int
    architecture: str


def _build() -> dict[str, InstanceType]:
    table: dict[str, InstanceType] = {}
    for family, (arch, threads, gib_per_vcpu, sizes) in _FAMILIES.items():
        for size in sizes:
            name = f"{family}.{size}"
            vcpus = _SIZE_VCPUS[size]
            gib = _MEMORY_GIB_EXCEPTIONS.get(name, vcpus * gib_per_vcpu)
            table[name] = InstanceType(name, family, vcpus, int(gib * 1024), threads, arch)
    return table


#: Every known type by name, e.g. ``INSTANCE_TYPES["m6i.xlarge"].vcpus == 4``.
INSTANCE_TYPES: dict[str, InstanceType] = _build()
#: The families, in the order above.
FAMILIES: tuple[str, ...] = tuple(_FAMILIES)


def lookup(name: str) -> InstanceType | None:
    """The instance type called ``name`` (``"m6i.xlarge"``), or None when it is not known."""
    return INSTANCE_TYPES.get(name.strip().lower())


def sizes_of(family: str) -> tuple[str, ...]:
    """The size names known for ``family`` (``("xlarge", "2xlarge", ...)``); empty if unknown."""
    spec = _FAMILIES.get(family)
    return spec[3] if spec else ()
