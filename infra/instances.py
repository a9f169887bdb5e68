"""The Nitro Enclaves-capable instance types, as the CDK app sees them.

The table itself (families, sizes, vCPUs, memory, threads per core, architecture) is data in
:mod:`enclave_core.deploy.instance_types`, so that ``enclave config validate`` checks sizes without
aws-cdk-lib installed. This module re-exports it, for users' own CDK apps, and adds what the
stack needs from it: the Amazon Linux architecture to boot.
"""

from __future__ import annotations

from enclave_core.deploy.instance_types import (
    FAMILIES,
    INSTANCE_TYPES,
    InstanceType,
    lookup,
    sizes_of,
)
from enclave_core.errors import ConfigError

__all__ = [
    "FAMILIES",
    "INSTANCE_TYPES",
    "InstanceType",
    "enclave_instance",
    "lookup",
    "sizes_of",
]


def enclave_instance(name: str) -> InstanceType:
    """Return the figures of ``name`` (``m6i.xlarge``).

    :raises ConfigError: when ``name`` is not a Nitro Enclaves parent this package knows (an
        unknown family, a ``.metal`` size, or a size below ``.xlarge``), naming the known families.
    """
    found = lookup(name)
    if found is None:
        raise ConfigError(
            f"instance_type {name!r} is not a Nitro Enclaves instance type this package knows "
            f"(families: {', '.join(FAMILIES)}; sizes .xlarge and up, no .metal)"
        )
    return found
