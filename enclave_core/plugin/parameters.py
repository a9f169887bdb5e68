"""Helpers over the :class:`~enclave_core.plugin.interfaces.Secrets` parameter store."""

from __future__ import annotations

from loguru import logger

from enclave_core.plugin.interfaces import Secrets


def create_parameter(secrets: Secrets, name: str, value: str) -> bool:
    """Store ``name`` only if absent; return whether this call stored it.

    Uses the backend's atomic ``create`` when it has one (every built-in backend does). A
    third-party backend without it gets a get-then-put, which two enclaves booting at the same
    moment can both pass: that is logged, since it matters with ``instances`` above 1.
    """
    create = getattr(secrets, "create", None)
    if create is not None:
        return bool(create(name, value))
    logger.bind(backend=type(secrets).__name__, parameter=name).warning(
        "secrets backend has no atomic create; concurrent first boots could disagree"
    )
    if secrets.get(name) is not None:
        return False
    secrets.put(name, value)
    return True
