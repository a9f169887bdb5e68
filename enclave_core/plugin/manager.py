"""Builds the plugin manager: pluggy loads the plugins and calls their registration hooks.

:func:`get_plugin_manager` blocks the deny-list, loads the ``enclave`` entry points and calls each
``enclave_register_<capability>`` hook through pluggy (so ``tryfirst``, ``trylast`` and wrappers
apply), filling the typed registries of :class:`PluginManager`. A failure names the plugin at
fault. ``ENCLAVE_TRACE_PLUGINS=1`` writes every hook call, its implementations and timing to stderr.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from types import CodeType, FrameType, TracebackType
from typing import Any, TextIO

import pluggy
from loguru import logger

from enclave_core.errors import DuplicateBackend, PluginError
from enclave_core.plugin import hookspecs
from enclave_core.plugin.capabilities import CAPABILITIES, Capability, capability_named
from enclave_core.plugin.interfaces import Attestation, Kms, Launcher, Secrets, Storage
from enclave_core.plugin.markers import PROJECT_NAME
from enclave_core.plugin.registry import BackendRegistry, InvalidBackend

ENTRY_POINT_GROUP = PROJECT_NAME
#: Set to ``1`` to trace every hook call on stderr (like datasette's DATASETTE_TRACE_PLUGINS).
TRACE_ENV = "ENCLAVE_TRACE_PLUGINS"
TRACE_PREFIX = "[enclave plugin trace]"


@dataclass
class PluginInfo:
    """One loaded plugin: its entry-point name, module and distribution."""

    name: str
    module: str
    distribution: str
    version: str


@dataclass
class PluginManager:
    """Typed facade over the pluggy manager: one registry per capability.

    Build it with :func:`get_plugin_manager`; nothing else in the core calls ``pm.hook``.
    """

    pm: pluggy.PluginManager
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    registries: dict[Capability, BackendRegistry[Any]] = field(
        default_factory=lambda: {c: BackendRegistry(c, c.protocol) for c in CAPABILITIES}
    )

    @property
    def storage(self) -> BackendRegistry[Storage]:
        """The storage backends."""
        return self.registries[Capability.STORAGE]

    @property
    def secrets(self) -> BackendRegistry[Secrets]:
        """The parameter-store backends."""
        return self.registries[Capability.SECRETS]

    @property
    def kms(self) -> BackendRegistry[Kms]:
        """The key-management backends."""
        return self.registries[Capability.KMS]

    @property
    def attestation(self) -> BackendRegistry[Attestation]:
        """The Nitro Secure Module backends."""
        return self.registries[Capability.ATTESTATION]

    @property
    def launcher(self) -> BackendRegistry[Launcher]:
        """The launchers."""
        return self.registries[Capability.LAUNCHER]

    def registry(self, capability: str) -> BackendRegistry[Any]:
        """Return the registry of ``capability`` (one of CAPABILITIES); KeyError otherwise."""
        return self.registries[capability_named(capability)]

    def backends(self) -> list[dict[str, str]]:
        """List every registered backend with its capability, name, plugin and distribution."""
        rows = []
        for capability in CAPABILITIES:
            reg = self.registries[capability]
            for name in reg.names():
                owner = reg.owner(name)
                info = self.plugins.get(owner)
                rows.append(
                    {
                        "capability": capability.value,
                        "name": name,
                        "plugin": owner,
                        "distribution": info.distribution if info else "unknown",
                        "version": info.version if info else "",
                    }
                )
        return rows

    def _register_all(self) -> None:
        """Call every registration hook through pluggy, blaming the plugin at fault on error."""
        for capability in CAPABILITIES:
            reg = self.registries[capability]
            caller = getattr(self.pm.hook, capability.hook)
            impls = caller.get_hookimpls()
            reg.set_plugin_resolver(functools.partial(_plugin_on_stack, impls))
            try:
                caller(registry=reg)
            except (DuplicateBackend, InvalidBackend):
                raise  # the registry's message names the plugins already
            except Exception as exc:
                plugin = _plugin_in_traceback(impls, exc.__traceback__) or "unknown"
                raise PluginError(
                    f"plugin {plugin!r} failed in {capability.hook}: {_one_line(exc)}"
                ) from exc
            finally:
                reg.set_plugin_resolver(None)


# --- which plugin is running: the hook implementation whose frame is on the stack ----------------


def _impl_code(impl: pluggy.HookImpl) -> CodeType | None:
    function = getattr(impl.function, "__func__", impl.function)
    return getattr(function, "__code__", None)


def _plugin_of_frame(frame: FrameType, impls: Sequence[pluggy.HookImpl]) -> str | None:
    matches = [impl for impl in impls if _impl_code(impl) is frame.f_code]
    if len(matches) > 1:  # one function shared by several plugins: tell them apart by `self`
        code = frame.f_code
        first = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        matches = [m for m in matches if getattr(m.function, "__self__", None) is first] or matches
    return matches[0].plugin_name if matches else None


def _plugin_on_stack(impls: Sequence[pluggy.HookImpl]) -> str | None:
    """The plugin of the innermost hook implementation among the callers, if any."""
    frame = inspect.currentframe()
    while frame is not None:
        name = _plugin_of_frame(frame, impls)
        if name is not None:
            return name
        frame = frame.f_back
    return None


def _plugin_in_traceback(impls: Sequence[pluggy.HookImpl], tb: TracebackType | None) -> str | None:
    """The plugin of the innermost hook implementation an exception passed through."""
    found = None
    while tb is not None:
        found = _plugin_of_frame(tb.tb_frame, impls) or found
        tb = tb.tb_next
    return found


# --- tracing --------------------------------------------------------------------------------------


def trace_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``ENCLAVE_TRACE_PLUGINS`` asks for hook tracing (set, and not 0/false/no/off)."""
    value = environ.get(TRACE_ENV, "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def _describe(impl: pluggy.HookImpl) -> str:
    flags = [
        flag
        for flag in ("wrapper", "hookwrapper", "tryfirst", "trylast")
        if getattr(impl, flag, False)
    ]
    return impl.plugin_name + (f" ({', '.join(flags)})" if flags else "")


def add_tracing(pm: pluggy.PluginManager, stream: TextIO | None = None) -> Callable[[], None]:
    """Write each hook call, its implementations in call order and its duration to ``stream``
    (stderr by default). Returns pluggy's undo function."""
    started: list[float] = []

    def write(line: str) -> None:
        out = stream or sys.stderr
        out.write(f"{TRACE_PREFIX} {line}\n")
        out.flush()

    def before(
        hook_name: str, hook_impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]
    ) -> None:
        args = ", ".join(f"{key}={_short(value)}" for key, value in kwargs.items())
        order = ", ".join(_describe(impl) for impl in reversed(hook_impls)) or "none"
        write(f"{hook_name}({args}) implementations, in call order: {order}")
        started.append(time.perf_counter())

    def after(
        outcome: pluggy.Result[Any],
        hook_name: str,
        hook_impls: Sequence[pluggy.HookImpl],
        kwargs: Mapping[str, Any],
    ) -> None:
        elapsed_ms = (time.perf_counter() - started.pop()) * 1000
        error = outcome.exception
        result = f"failed: {_one_line(error)}" if error is not None else "done"
        write(f"{hook_name} {result} in {elapsed_ms:.3f} ms")

    return pm.add_hookcall_monitoring(before, after)


def _short(value: object) -> str:
    if isinstance(value, BackendRegistry):
        return f"<{value.capability} registry>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- loading ----------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _unloaded_entry_point(pm: pluggy.PluginManager) -> metadata.EntryPoint | None:
    """The entry point ``load_setuptools_entrypoints`` stopped at: the first one, in its order,
    neither loaded nor blocked."""
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP and not (
                pm.has_plugin(ep.name) or pm.is_blocked(ep.name)
            ):
                return ep
    return None


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:
        ep = _unloaded_entry_point(pm)
        where = f"plugin {ep.name!r} ({ep.value})" if ep is not None else "a plugin"
        raise PluginError(f"{where} failed to load: {_one_line(exc)}") from exc


def get_plugin_manager(
    disable: Iterable[str] = (), extra_plugins: Iterable[tuple[str, object]] = ()
) -> PluginManager:
    """Build the plugin manager: specs, deny-list, entry points, extra plugins, registries.

    :param disable: entry-point names to block (``plugins.disable`` in enclave.yaml).
    :param extra_plugins: ``(name, module_or_object)`` pairs registered after the entry points,
        for tests and embedding (blocked too when their name is in ``disable``).
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    if trace_enabled():
        add_tracing(pm)
    for name in disable:
        pm.set_blocked(name)
    _load_entry_points(pm)
    manager = PluginManager(pm=pm)
    for plugin, dist in pm.list_plugin_distinfo():
        name = pm.get_name(plugin) or "unknown"
        manager.plugins[name] = PluginInfo(
            name=name,
            module=getattr(plugin, "__name__", type(plugin).__qualname__),
            distribution=dist.project_name,
            version=dist.version,
        )
    for name, plugin in extra_plugins:
        try:
            registered = pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin {name!r} failed to register: {_one_line(exc)}") from exc
        if registered is not None:
            module = getattr(plugin, "__name__", type(plugin).__qualname__)
            manager.plugins[name] = PluginInfo(name, module, "local", "")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements an unknown hook: {_one_line(exc)}") from exc
    manager._register_all()
    logger.debug("plugins loaded", plugins=sorted(manager.plugins))
    return manager
