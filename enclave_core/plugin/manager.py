"""Builds the plugin manager and exposes the registries through a typed facade."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from loguru import logger

from enclave_core import PROJECT_NAME
from enclave_core.errors import DuplicateBackend, PluginError
from enclave_core.plugin import hookspecs
from enclave_core.plugin.interfaces import Attestation, Kms, Launcher, Secrets, Storage
from enclave_core.plugin.registry import CAPABILITIES, BackendRegistry

ENTRY_POINT_GROUP = PROJECT_NAME


@dataclass
class PluginInfo:
    """One loaded plugin: its entry-point name, module and distribution."""

    name: str
    module: str
    distribution: str
    version: str


@dataclass
class Plugins:
    """Typed facade over the pluggy manager: one registry per capability.

    Build it with :func:`get_plugin_manager`; nothing else in the core calls ``pm.hook``.
    """

    pm: pluggy.PluginManager
    storage: BackendRegistry[Storage] = field(default_factory=lambda: BackendRegistry("storage"))
    secrets: BackendRegistry[Secrets] = field(default_factory=lambda: BackendRegistry("secrets"))
    kms: BackendRegistry[Kms] = field(default_factory=lambda: BackendRegistry("kms"))
    attestation: BackendRegistry[Attestation] = field(
        default_factory=lambda: BackendRegistry("attestation")
    )
    launcher: BackendRegistry[Launcher] = field(default_factory=lambda: BackendRegistry("launcher"))
    plugins: dict[str, PluginInfo] = field(default_factory=dict)

    def registry(self, capability: str) -> BackendRegistry[Any]:
        """Return the registry of ``capability`` (one of CAPABILITIES)."""
        if capability not in CAPABILITIES:
            raise KeyError(capability)
        reg: BackendRegistry[Any] = getattr(self, capability)
        return reg

    def backends(self) -> list[dict[str, str]]:
        """List every registered backend with its capability, name, plugin and distribution."""
        rows = []
        for capability in CAPABILITIES:
            reg = self.registry(capability)
            for name in reg.names():
                owner = reg.owner(name)
                info = self.plugins.get(owner)
                rows.append(
                    {
                        "capability": capability,
                        "name": name,
                        "plugin": owner,
                        "distribution": info.distribution if info else "unknown",
                        "version": info.version if info else "",
                    }
                )
        return rows

    def _register_all(self) -> None:
        for capability in CAPABILITIES:
            reg = self.registry(capability)
            caller = getattr(self.pm.hook, f"enclave_register_{capability}")
            # Call each implementation on its own so an error or a duplicate names its plugin.
            for impl in reversed(caller.get_hookimpls()):
                reg.set_current_plugin(impl.plugin_name)
                kwargs = {"registry": reg} if "registry" in impl.argnames else {}
                try:
                    impl.function(**kwargs)
                except DuplicateBackend:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} failed in enclave_register_{capability}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc


def _entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=ENTRY_POINT_GROUP)


def get_plugin_manager(
    disable: Iterable[str] = (), extra_plugins: Iterable[tuple[str, object]] = ()
) -> Plugins:
    """Build the plugin manager: specs, deny-list, entry points, extra plugins, registries.

    :param disable: entry-point names to block (``plugins.disable`` in enclave.yaml).
    :param extra_plugins: ``(name, module_or_object)`` pairs registered after the entry points,
        for tests and embedding.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    blocked = set(disable)
    facade = Plugins(pm=pm)
    for ep in _entry_points():
        if ep.name in blocked or pm.is_blocked(ep.name):
            continue
        if pm.get_plugin(ep.name) is not None:
            # Same entry point name twice (for example two copies installed): keep the first.
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        pm.register(plugin, name=ep.name)
        dist = getattr(ep, "dist", None)
        facade.plugins[ep.name] = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else "unknown",
            version=dist.version if dist is not None else "",
        )
    for name, plugin in extra_plugins:
        if name in blocked:
            continue
        pm.register(plugin, name=name)
        facade.plugins[name] = PluginInfo(name, getattr(plugin, "__name__", name), "local", "")
    for name in blocked:
        pm.set_blocked(name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements an unknown hook: {exc}") from exc
    facade._register_all()
    logger.debug("plugins loaded", plugins=sorted(facade.plugins))
    return facade
