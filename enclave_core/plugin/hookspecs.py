"""Hook specifications: the only place Simple Enclave declares hooks.

One ``enclave_register_<capability>`` hook per capability
(:mod:`enclave_core.plugin.capabilities`). Plugins implement them with ``from enclave_core import
hookimpl``; every hook takes keyword arguments, and an implementation may accept fewer arguments
than the spec names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enclave_core.plugin.markers import hookspec

if TYPE_CHECKING:
    from enclave_core.plugin.registry import BackendRegistry

# ---------------------------------------------------------------------------------------------
# Registration: called once per plugin manager, before enclave.yaml selects backends.
# ---------------------------------------------------------------------------------------------


@hookspec
def enclave_register_storage(registry: BackendRegistry[Any]) -> None:
    """Register object-storage backend classes.

    Called once, when the plugin manager is built and before enclave.yaml is validated. Call
    ``registry.add(cls)``; ``cls.name`` is what users write under ``storage.backend``. The class
    implements :class:`enclave_core.plugin.interfaces.Storage`. The core encrypts every object
    before it reaches the backend, so a storage backend never sees plaintext.

    :param registry: the storage registry; adding a name that is taken raises
        :class:`~enclave_core.errors.DuplicateBackend` naming both plugins, and adding a class
        without a valid ``name``, ``Options``, ``from_options`` or a method of the Protocol raises
        :class:`~enclave_core.plugin.registry.InvalidBackend` naming the plugin.
    :returns: nothing.

    .. versionadded:: 0.1
    """


@hookspec
def enclave_register_secrets(registry: BackendRegistry[Any]) -> None:
    """Register parameter-store backend classes (where ciphertexts and migration state live).

    Called once, when the plugin manager is built. Call ``registry.add(cls)``; ``cls.name`` is what
    users write under ``secrets.backend``. The class implements
    :class:`enclave_core.plugin.interfaces.Secrets`.

    :param registry: the secrets registry; adding a name that is taken raises.
    :returns: nothing.

    .. versionadded:: 0.1
    """


@hookspec
def enclave_register_kms(registry: BackendRegistry[Any]) -> None:
    """Register key-management backend classes.

    Called once, when the plugin manager is built. Call ``registry.add(cls)``; ``cls.name`` is what
    users write under ``kms.backend``. The class implements
    :class:`enclave_core.plugin.interfaces.Kms`, including encryption contexts, key policies and the
    Nitro ``Recipient`` parameter.

    :param registry: the KMS registry; adding a name that is taken raises.
    :returns: nothing.

    .. versionadded:: 0.1
    """


@hookspec
def enclave_register_attestation(registry: BackendRegistry[Any]) -> None:
    """Register Nitro Secure Module backend classes.

    Called once, when the plugin manager is built. Call ``registry.add(cls)``; ``cls.name`` is what
    users write under ``attestation.backend``. The class implements
    :class:`enclave_core.plugin.interfaces.Attestation` (PCRs, attestation documents, random bytes).

    :param registry: the attestation registry; adding a name that is taken raises.
    :returns: nothing.

    .. versionadded:: 0.1
    """


@hookspec
def enclave_register_launcher(registry: BackendRegistry[Any]) -> None:
    """Register launcher backend classes (how the supervisor starts and stops the enclave).

    Called once, when the plugin manager is built. Call ``registry.add(cls)``; ``cls.name`` is what
    users write under ``launcher.backend``. The class implements
    :class:`enclave_core.plugin.interfaces.Launcher`.

    :param registry: the launcher registry; adding a name that is taken raises.
    :returns: nothing.

    .. versionadded:: 0.1
    """
