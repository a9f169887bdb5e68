"""Minimal backend classes for the plugin-core tests: valid ones, and ones missing one thing."""

from __future__ import annotations

from typing import Any

import marshmallow

from enclave_core.plugin.capabilities import Capability
from enclave_core.plugin.registry import protocol_members


def _method(name: str) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(name)

    method.__name__ = name
    return method


def backend_class(
    name: str = "alpha", capability: Capability = Capability.STORAGE, /, **changes: Any
) -> type:
    """A class with everything a ``capability`` backend needs; ``changes`` replace (or, given
    the ``DELETE`` value, remove) attributes."""

    class Options(marshmallow.Schema):
        pass

    def from_options(cls: type, options: dict[str, Any], context: Any) -> Any:
        return cls()

    attributes: dict[str, Any] = {
        "name": name,
        "Options": Options,
        "from_options": classmethod(from_options),
    }
    _, methods = protocol_members(capability.protocol)
    attributes.update({method: _method(method) for method in methods})
    for key, value in changes.items():
        if value is DELETE:
            attributes.pop(key, None)
        else:
            attributes[key] = value
    return type(f"{capability.value.title()}Backend", (), attributes)


DELETE = object()
