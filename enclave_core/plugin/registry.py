"""Typed registries of backend classes, one per capability, checking each class as it is added.

Plugins call :meth:`BackendRegistry.add` from their ``enclave_register_<capability>`` hook. A class
is refused at once (:class:`InvalidBackend`, one line naming the plugin) unless it has a valid
``name``, a marshmallow ``Options`` schema, a callable ``from_options`` and every method of the
capability's Protocol; a name added twice is a :class:`~enclave_core.errors.DuplicateBackend`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Generic, TypeVar

import marshmallow

from enclave_core.errors import BackendNotFound, DuplicateBackend, PluginError
from enclave_core.plugin.capabilities import CAPABILITIES, capability_named

T = TypeVar("T")

#: What a backend's ``name`` may be: what users write under ``<capability>.backend``.
BACKEND_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")

__all__ = [
    "BACKEND_NAME_RE",
    "CAPABILITIES",
    "BackendRegistry",
    "InvalidBackend",
    "backend_problems",
    "protocol_members",
]


class InvalidBackend(PluginError):
    """A plugin registered a class that is not a usable backend of its capability."""


def protocol_members(protocol: type) -> tuple[list[str], list[str]]:
    """Return the public ``(attributes, methods)`` a Protocol class declares, sorted.

    ``isinstance`` with a ``runtime_checkable`` Protocol only works on instances, and a registry
    holds classes, so the members are read from the Protocol and its Protocol bases.
    """
    attributes: set[str] = set()
    methods: set[str] = set()
    for base in protocol.__mro__:
        if not getattr(base, "_is_protocol", False) or base.__module__ == "typing":
            continue
        for name, value in vars(base).items():
            if not name.startswith("_") and (
                inspect.isfunction(value) or isinstance(value, classmethod | staticmethod)
            ):
                methods.add(name)
        for name in getattr(base, "__annotations__", {}):
            if not name.startswith("_"):
                attributes.add(name)
    return sorted(attributes - methods), sorted(methods)


def backend_problems(cls: object, protocol: type | None = None) -> list[str]:
    """Return what keeps ``cls`` from being a backend class (of ``protocol``); empty when none."""
    if not isinstance(cls, type):
        return [f"{cls!r} is not a class"]
    problems: list[str] = []
    name = getattr(cls, "name", None)
    if name is None:
        problems.append("no 'name' (what users write under '<capability>.backend')")
    elif not isinstance(name, str) or not BACKEND_NAME_RE.match(name):
        problems.append(
            f"'name' {name!r} is not a name like 'my-backend' (a letter, then letters, digits, "
            "'_', '-' or '.')"
        )
    options = getattr(cls, "Options", None)
    if options is None:
        problems.append("no 'Options' (a nested marshmallow.Schema subclass)")
    elif not (isinstance(options, type) and issubclass(options, marshmallow.Schema)):
        problems.append(f"'Options' is {options!r}, not a marshmallow.Schema subclass")
    from_options = getattr(cls, "from_options", None)
    if from_options is None:
        problems.append("no 'from_options(options, context)' classmethod")
    elif not callable(from_options):
        problems.append("'from_options' is not callable")
    if protocol is not None:
        attributes, methods = protocol_members(protocol)
        missing = [m for m in methods if not hasattr(cls, m)]
        missing += [a for a in attributes if a != "name" and not hasattr(cls, a)]
        if missing:
            problems.append(f"missing {protocol.__name__} member(s): {', '.join(missing)}")
        not_methods = [
            m for m in methods if hasattr(cls, m) and not inspect.isroutine(getattr(cls, m))
        ]
        if not_methods:
            problems.append(f"not method(s): {', '.join(not_methods)}")
    return problems


class BackendRegistry(Generic[T]):
    """The backend classes of one capability, by name.

    Plugins call :meth:`add` from their ``enclave_register_<capability>`` hook. Adding a name twice
    is an error naming both plugins, so two plugins can never silently shadow each other.

    :param capability: the capability's name (``storage``...).
    :param protocol: the Protocol its classes implement; by default the capability's own
        (:class:`~enclave_core.plugin.capabilities.Capability`); none for an unknown name.
    """

    def __init__(self, capability: str, protocol: type | None = None) -> None:
        self.capability = capability
        if protocol is None and capability in CAPABILITIES:
            protocol = capability_named(capability).protocol
        self.protocol = protocol
        self._classes: dict[str, type[T]] = {}
        self._owners: dict[str, str] = {}
        self._current_plugin = "unknown"
        self._plugin_resolver: Callable[[], str | None] | None = None

    def set_current_plugin(self, plugin_name: str) -> None:
        """Record which plugin is adding classes, so errors can blame it precisely."""
        self._current_plugin = plugin_name

    def set_plugin_resolver(self, resolver: Callable[[], str | None] | None) -> None:
        """Let ``resolver()`` say which plugin is adding classes (the plugin manager's way,
        while it calls a registration hook); None, or a None answer, falls back to
        :meth:`set_current_plugin`'s."""
        self._plugin_resolver = resolver

    def current_plugin(self) -> str:
        """The name of the plugin adding classes now, or ``unknown``."""
        if self._plugin_resolver is not None:
            name = self._plugin_resolver()
            if name:
                return name
        return self._current_plugin

    def add(self, cls: type[T]) -> None:
        """Register ``cls`` under ``cls.name``.

        :raises InvalidBackend: ``cls`` is not a valid backend class of this capability.
        :raises DuplicateBackend: another class has this name already.
        """
        plugin = self.current_plugin()
        problems = backend_problems(cls, self.protocol)
        if problems:
            what = getattr(cls, "__qualname__", repr(cls))
            raise InvalidBackend(
                f"{self.capability} backend class {what} from plugin {plugin!r} is invalid: "
                + "; ".join(problems)
            )
        name: str = cls.name  # type: ignore[attr-defined]
        if name in self._classes:
            raise DuplicateBackend(
                f"{self.capability} backend {name!r} is registered twice: by plugin "
                f"{self._owners[name]!r} and by plugin {plugin!r}"
            )
        self._classes[name] = cls
        self._owners[name] = plugin

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
