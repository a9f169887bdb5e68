"""The :class:`~enclave_core.plugin.interfaces.BackendContext` a backend gets, for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enclave_core.plugin.interfaces import BackendContext


def backend_context(base_dir: Path, **fields: Any) -> BackendContext:
    """App ``hello`` in development (prefix ``dev``, us-east-1) with its folder, app and state in
    ``base_dir`` (state in ``base_dir/.enclave``); keyword arguments replace any field."""
    defaults: dict[str, Any] = {
        "name": "hello",
        "prefix": "dev",
        "region": "us-east-1",
        "mode": "development",
        "base_dir": base_dir,
        "state_dir": base_dir / ".enclave",
        "app_dir": base_dir,
    }
    return BackendContext(**{**defaults, **fields})
