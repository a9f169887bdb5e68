"""Simple Enclave core; the package root is the plugin authors' API.

A plugin needs only what is exported here: ``hookimpl`` to mark its ``enclave_register_*`` hooks,
the ``BackendRegistry`` they receive, the five capability Protocols its backend classes implement
and the ``BackendContext`` they are built with. The root imports only leaf modules (no module it
imports imports the root back), so ``from enclave_core import hookimpl`` never starts a cycle.
"""

from __future__ import annotations

from enclave_core.plugin.interfaces import (
    Attestation,
    BackendContext,
    Kms,
    Launcher,
    Secrets,
    Storage,
)
from enclave_core.plugin.markers import PROJECT_NAME, hookimpl
from enclave_core.plugin.registry import BackendRegistry

__version__ = "0.1.0"

__all__ = [
    "PROJECT_NAME",
    "Attestation",
    "BackendContext",
    "BackendRegistry",
    "Kms",
    "Launcher",
    "Secrets",
    "Storage",
    "__version__",
    "hookimpl",
]
