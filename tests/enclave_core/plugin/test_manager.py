"""The plugin manager: entry points loaded and registration hooks called through pluggy.

Hook options work (``tryfirst``, ``trylast``, wrappers), the deny-list blocks entry points and
extra plugins alike, and every failure (a plugin raising, a duplicate or invalid backend, an entry
point that does not load) is one error naming the plugin at fault.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from enclave_core import hookimpl
from enclave_core.errors import DuplicateBackend, PluginError
from enclave_core.plugin import hookspecs
from enclave_core.plugin.capabilities import CAPABILITIES, Capability
from enclave_core.plugin.manager import PluginManager, get_plugin_manager
from enclave_core.plugin.registry import BackendRegistry, InvalidBackend
from tests.enclave_core.plugin.classes import DELETE, backend_class


class Recorder:
    """A storage plugin recording, in ``calls``, when its hook runs and what it saw."""

    def __init__(self, label: str, calls: list[str], backend: str | None = None) -> None:
        self.label = label
        self.calls = calls
        self.backend = backend

    def enclave_register_storage(self, registry: BackendRegistry[Any]) -> None:
        self.calls.append(self.label)
        if self.backend is not None:
            registry.add(backend_class(self.backend))


class First(Recorder):
    @hookimpl(tryfirst=True)
    def enclave_register_storage(self, registry: BackendRegistry[Any]) -> None:
        super().enclave_register_storage(registry)


class Last(Recorder):
    @hookimpl(trylast=True)
    def enclave_register_storage(self, registry: BackendRegistry[Any]) -> None:
        super().enclave_register_storage(registry)


class Plain(Recorder):
    @hookimpl
    def enclave_register_storage(self, registry: BackendRegistry[Any]) -> None:
        super().enclave_register_storage(registry)


def test_tryfirst_and_trylast_order_the_registration_calls() -> None:
    calls: list[str] = []
    plugins = get_plugin_manager(
        extra_plugins=[
            ("last", Last("last", calls, "zulu")),
            ("first", First("first", calls, "alpha")),
            ("plain", Plain("plain", calls, "mike")),
        ]
    )
    assert calls == ["first", "plain", "last"]
    assert [plugins.storage.owner(n) for n in ("alpha", "mike", "zulu")] == [
        "first",
        "plain",
        "last",
    ]


def test_tryfirst_runs_before_the_built_in_plugins() -> None:
    class Dup(Recorder):
        @hookimpl(tryfirst=True)
        def enclave_register_storage(self, registry: BackendRegistry[Any]) -> None:
            assert registry.names() == []  # nothing else has run yet
            registry.add(backend_class("local"))

    with pytest.raises(DuplicateBackend) as info:
        get_plugin_manager(extra_plugins=[("dup", Dup("dup", []))])
    assert str(info.value) == (
        "storage backend 'local' is registered twice: by plugin 'dup' and by plugin 'local-storage'"
    )


def test_a_wrapper_sees_the_registration() -> None:
    seen: dict[str, list[str]] = {}

    class Audit:
        @hookimpl(wrapper=True)
        def enclave_register_storage(
            self, registry: BackendRegistry[Any]
        ) -> Generator[None, None, None]:
            seen["before"] = registry.names()
            result = yield
            seen["after"] = registry.names()
            registry.add(backend_class("audited"))
            return result

    plugins = get_plugin_manager(extra_plugins=[("audit", Audit())])
    assert seen["before"] == []
    assert {"local", "s3"} <= set(seen["after"])
    assert plugins.storage.owner("audited") == "audit"
    assert plugins.storage.owner("local") == "local-storage"


def test_an_old_style_hookwrapper_sees_the_registration_too() -> None:
    seen: list[list[str]] = []

    class Audit:
        @hookimpl(hookwrapper=True)
        def enclave_register_kms(self, registry: BackendRegistry[Any]) -> Generator[Any, Any, None]:
            yield
            seen.append(registry.names())

    get_plugin_manager(extra_plugins=[("audit", Audit())])
    assert seen == [["aws", "local"]]


def test_a_failing_plugin_is_named() -> None:
    def helper() -> None:
        raise RuntimeError("cannot reach the server")

    class Boom:
        @hookimpl
        def enclave_register_kms(self, registry: BackendRegistry[Any]) -> None:
            helper()  # the plugin is blamed even when the error comes from deeper down

    with pytest.raises(PluginError) as info:
        get_plugin_manager(extra_plugins=[("boom", Boom())])
    assert str(info.value) == (
        "plugin 'boom' failed in enclave_register_kms: RuntimeError: cannot reach the server"
    )
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_wrapper_failing_after_the_others_is_named() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def enclave_register_launcher(
            self, registry: BackendRegistry[Any]
        ) -> Generator[None, None, None]:
            yield
            raise ValueError("wrapped")

    with pytest.raises(
        PluginError, match=r"^plugin 'wrapping' failed in enclave_register_launcher"
    ):
        get_plugin_manager(extra_plugins=[("wrapping", Wrapper())])


def test_a_plugin_failing_under_a_wrapper_is_named_not_the_wrapper() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def enclave_register_secrets(
            self, registry: BackendRegistry[Any]
        ) -> Generator[None, None, None]:
            return (yield)

    class Boom:
        @hookimpl
        def enclave_register_secrets(self) -> None:
            raise KeyError("x")

    with pytest.raises(PluginError, match=r"^plugin 'boom' failed in enclave_register_secrets: "):
        get_plugin_manager(extra_plugins=[("wrapper", Wrapper()), ("boom", Boom())])


def test_an_invalid_class_names_its_plugin() -> None:
    class Bad:
        @hookimpl
        def enclave_register_attestation(self, registry: BackendRegistry[Any]) -> None:
            registry.add(backend_class("nsm", Capability.ATTESTATION, get_random=DELETE))

    with pytest.raises(InvalidBackend) as info:
        get_plugin_manager(extra_plugins=[("bad-nsm", Bad())])
    assert str(info.value) == (
        "attestation backend class AttestationBackend from plugin 'bad-nsm' is invalid: "
        "missing Attestation member(s): get_random"
    )


def test_two_instances_of_one_plugin_class_are_told_apart() -> None:
    class Shared(Recorder):
        @hookimpl
        def enclave_register_storage(self, registry: BackendRegistry[Any]) -> None:
            changes = {"Options": DELETE} if self.label == "second" else {}
            registry.add(backend_class(self.label, **changes))

    calls: list[str] = []
    with pytest.raises(InvalidBackend, match=r"from plugin 'second' is invalid: no 'Options'"):
        get_plugin_manager(
            extra_plugins=[(label, Shared(label, calls)) for label in ("first", "second", "third")]
        )
    plugins = get_plugin_manager(
        extra_plugins=[(label, Shared(label, calls)) for label in ("first", "third")]
    )
    assert (plugins.storage.owner("first"), plugins.storage.owner("third")) == ("first", "third")


def test_disable_blocks_entry_points_and_extra_plugins() -> None:
    calls: list[str] = []
    plugins = get_plugin_manager(
        disable=["local-storage", "extra"],
        extra_plugins=[("extra", Plain("extra", calls, "extra")), ("kept", Plain("kept", calls))],
    )
    assert "local" not in plugins.storage and "s3" in plugins.storage
    assert calls == ["kept"]
    assert set(plugins.plugins) >= {"kept", "s3-storage"}
    assert not {"extra", "local-storage"} & set(plugins.plugins)
    assert plugins.pm.is_blocked("local-storage")


def test_a_plugin_implementing_an_unknown_hook_is_refused() -> None:
    class Typo:
        @hookimpl
        def enclave_register_storag(self, registry: BackendRegistry[Any]) -> None:
            pass

    with pytest.raises(PluginError, match="unknown hook 'enclave_register_storag'"):
        get_plugin_manager(extra_plugins=[("typo", Typo())])


def test_a_hook_with_an_unknown_argument_is_refused_naming_the_plugin() -> None:
    class Wrong:
        @hookimpl
        def enclave_register_storage(self, registry: Any, session: Any) -> None:
            pass

    with pytest.raises(PluginError) as info:
        get_plugin_manager(extra_plugins=[("wrong", Wrong())])
    assert str(info.value).startswith("plugin 'wrong' failed to register: ")
    assert "\n" not in str(info.value)


# --- entry points, from distributions put on sys.path for the test --------------------------------


@pytest.fixture
def distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str, dict[str, str], str], None]]:
    """``make(dist, version, {entry point name: module}, module source)``: a distribution whose
    entry points are in the ``enclave`` group, importable from a folder on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    modules: list[str] = []

    def make(dist: str, version: str, entry_points: dict[str, str], source: str) -> None:
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
        (info / "entry_points.txt").write_text(f"[enclave]\n{lines}")
        for module in set(entry_points.values()):
            (tmp_path / f"{module}.py").write_text(source)
            modules.append(module)
        importlib.invalidate_caches()

    yield make
    for module in modules:
        sys.modules.pop(module, None)


FAKE_PLUGIN = """
from marshmallow import Schema
from enclave_core import hookimpl


class FakeLauncher:
    name = "fake"

    class Options(Schema):
        pass

    @classmethod
    def from_options(cls, options, context):
        return cls()

    def start(self, spec): ...
    def describe(self): ...
    def stop(self, timeout_s=10.0): ...
    def last_exit(self): ...
    def enclave_address(self, port): ...
    def log_lines(self): ...


@hookimpl
def enclave_register_launcher(registry):
    registry.add(FakeLauncher)
"""


def test_entry_points_load_with_their_distribution(
    distribution: Callable[[str, str, dict[str, str], str], None],
) -> None:
    distribution("fake-launcher-dist", "1.2.3", {"fake-launcher": "fake_launcher_mod"}, FAKE_PLUGIN)
    plugins = get_plugin_manager()
    assert plugins.launcher.owner("fake") == "fake-launcher"
    info = plugins.plugins["fake-launcher"]
    assert (info.module, info.distribution, info.version) == (
        "fake_launcher_mod",
        "fake-launcher-dist",
        "1.2.3",
    )
    assert {
        "capability": "launcher",
        "name": "fake",
        "plugin": "fake-launcher",
        "distribution": "fake-launcher-dist",
        "version": "1.2.3",
    } in plugins.backends()
    assert "fake" not in get_plugin_manager(disable=["fake-launcher"]).launcher


def test_an_entry_point_that_fails_to_load_is_named(
    distribution: Callable[[str, str, dict[str, str], str], None],
) -> None:
    distribution("broken-dist", "0.1", {"broken": "broken_plugin_mod"}, "raise ImportError('no')\n")
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    assert str(info.value) == (
        "plugin 'broken' (broken_plugin_mod) failed to load: ImportError: no"
    )
    assert "local" in get_plugin_manager(disable=["broken"]).storage


# --- one table of capabilities ----------------------------------------------------------------


def test_the_capability_table_matches_hooks_registries_and_config() -> None:
    from enclave_core.config import DEVELOPMENT_ONLY_BACKENDS, Config

    plugins = get_plugin_manager()
    assert [str(c) for c in CAPABILITIES] == [
        "storage",
        "secrets",
        "kms",
        "attestation",
        "launcher",
    ]
    assert sorted(c.hook for c in CAPABILITIES) == sorted(
        name for name in dir(hookspecs) if name.startswith("enclave_register_")
    )
    for capability in CAPABILITIES:
        assert plugins.registry(capability) is getattr(plugins, capability.value)
        assert plugins.registry(capability.value).protocol is capability.protocol
        assert Config(name="x").backend(capability).backend in DEVELOPMENT_ONLY_BACKENDS[capability]
    with pytest.raises(KeyError):
        plugins.registry("bogus")
    assert isinstance(plugins, PluginManager)
