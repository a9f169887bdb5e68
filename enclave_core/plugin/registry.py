"""Typed registries of backend classes, one per capability."""

from __future__ import annotations

from typing import Generic, TypeVar

from enclave_core.errors import BackendNotFound, DuplicateBackend

T = TypeVar("T")

CAPABILITIES = ("storage", "secrets", "kms", "attestation", "launcher")


class BackendRegistry(Generic[T]):
    """The backend classes of one capability, by name.

    Plugins call :meth:`add` from their ``enclave_register_<capability>`` hook. Adding a name twice
    is an error naming both plugins, so two plugins can never silently shadow each other.
    """

    def __init__(self, capability: str) -> None:
        self.capability = capability
        self._classes: dict[str, type[T]] = {}
        self._owners: dict[str, str] = {}
        self._current_plugin = "unknown"

    def set_current_plugin(self, plugin_name: str) -> None:
        """Record which plugin's hook is running, so duplicates can be blamed precisely."""
        self._current_plugin = plugin_name

    def add(self, cls: type[T]) -> None:
        """Register ``cls`` under ``cls.name``; raise DuplicateBackend if the name is taken."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise DuplicateBackend(
                f"{self.capability} backend class {cls.__qualname__} from plugin "
                f"{self._current_plugin!r} has no 'name'"
            )
        if name in self._classes:
            raise DuplicateBackend(
                f"{self.capability} backend {name!r} is registered twice: by plugin "
                f"{self._owners[name]!r} and by plugin {self._current_plugin!r}"
            )
        self._classes[name] = cls
        self._owners[name] = self._current_plugin

    def get(self, name: str) -> type[T]:
        """Return the class registered as ``name``; BackendNotFound lists the installed names."""
        try:
            return self._classes[name]
        except KeyError:
            installed = ", ".join(self.names()) or "none"
            raise BackendNotFound(
                f"{self.capability} backend {name!r} is not available; installed: {installed} "
                "(is the plugin installed?)"
            ) from None

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._classes)

    def owner(self, name: str) -> str:
        """Return the name of the plugin that registered ``name``."""
        return self._owners[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes
