"""The five capabilities, spelled once: name, registration hook and Protocol.

A :class:`Capability` is a ``str`` (``"storage"``...): the enclave.yaml block that selects its
backend, the attribute of :class:`~enclave_core.plugin.manager.PluginManager` holding its
registry and, as ``enclave_register_<name>``, the hook that fills that registry. The manager,
backend choice, config validation and ``enclave plugin list`` all iterate :data:`CAPABILITIES`.
"""

from __future__ import annotations

import enum

from enclave_core.plugin.interfaces import Attestation, Kms, Launcher, Secrets, Storage


class Capability(enum.StrEnum):
    """One capability: its name (the value), its Protocol and its registration hook."""

    protocol: type

    def __new__(cls, value: str, protocol: type) -> Capability:
        member = str.__new__(cls, value)
        member._value_ = value
        member.protocol = protocol
        return member

    STORAGE = "storage", Storage
    SECRETS = "secrets", Secrets
    KMS = "kms", Kms
    ATTESTATION = "attestation", Attestation
    LAUNCHER = "launcher", Launcher

    @property
    def hook(self) -> str:
        """The name of the hook that registers this capability's backends."""
        return f"enclave_register_{self.value}"


#: Every capability, in the order they are registered, validated and listed.
CAPABILITIES: tuple[Capability, ...] = tuple(Capability)
_BY_NAME = {capability.value: capability for capability in CAPABILITIES}


def capability_named(name: str) -> Capability:
    """The capability called ``name`` (``"storage"``...); KeyError if there is none."""
    return _BY_NAME[name]
