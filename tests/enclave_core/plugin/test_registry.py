"""The typed backend registry: names, duplicates, and the checks a class passes to be added."""

from __future__ import annotations

from typing import Any

import marshmallow
import pytest

from enclave_core.errors import BackendNotFound, DuplicateBackend, PluginError
from enclave_core.plugin.capabilities import CAPABILITIES, Capability
from enclave_core.plugin.interfaces import Attestation, Kms, Launcher, Secrets, Storage
from enclave_core.plugin.registry import (
    BackendRegistry,
    InvalidBackend,
    backend_problems,
    protocol_members,
)
from tests.enclave_core.plugin.classes import DELETE, backend_class

Alpha = backend_class("alpha")
AlsoAlpha = backend_class("alpha")


def test_add_get_names() -> None:
    reg: BackendRegistry[Any] = BackendRegistry("storage")
    reg.set_current_plugin("plugin-a")
    reg.add(Alpha)
    assert reg.get("alpha") is Alpha
    assert reg.names() == ["alpha"]
    assert reg.owner("alpha") == "plugin-a"
    assert "alpha" in reg


def test_duplicate_names_both_plugins() -> None:
    reg: BackendRegistry[Any] = BackendRegistry("storage")
    reg.set_current_plugin("plugin-a")
    reg.add(Alpha)
    reg.set_current_plugin("plugin-b")
    with pytest.raises(DuplicateBackend) as info:
        reg.add(AlsoAlpha)
    assert "'plugin-a'" in str(info.value) and "'plugin-b'" in str(info.value)


def test_unknown_name_lists_installed_in_one_line() -> None:
    reg: BackendRegistry[Any] = BackendRegistry("storage")
    reg.add(Alpha)
    with pytest.raises(BackendNotFound) as info:
        reg.get("s3x")
    message = str(info.value)
    assert message == (
        "storage backend 's3x' is not available; installed: alpha (is the plugin installed?)"
    )


def test_a_resolver_names_the_plugin_and_falls_back_when_it_cannot() -> None:
    reg: BackendRegistry[Any] = BackendRegistry("storage")
    reg.set_current_plugin("fallback")
    reg.set_plugin_resolver(lambda: "resolved")
    reg.add(backend_class("one"))
    reg.set_plugin_resolver(lambda: None)
    reg.add(backend_class("two"))
    assert (reg.owner("one"), reg.owner("two")) == ("resolved", "fallback")


def test_protocol_members_of_every_capability() -> None:
    assert protocol_members(Storage) == (["name"], ["delete", "get", "list", "put"])
    assert protocol_members(Secrets) == (["name"], ["delete", "get", "list", "put"])
    _, kms = protocol_members(Kms)
    assert {"create_key", "decrypt", "generate_data_key", "list_grants", "caller_arn"} <= set(kms)
    _, attestation = protocol_members(Attestation)
    assert {"attestation", "describe_pcr", "extend_pcr", "lock_pcrs"} <= set(attestation)
    _, launcher = protocol_members(Launcher)
    assert launcher == sorted(
        ["start", "describe", "stop", "last_exit", "enclave_address", "log_lines"]
    )


def test_a_registry_checks_against_its_capabilitys_protocol() -> None:
    for capability in CAPABILITIES:
        assert BackendRegistry(capability).protocol is capability.protocol
        BackendRegistry(capability).add(backend_class("ok", capability))
    assert BackendRegistry("custom").protocol is None
    BackendRegistry("custom").add(backend_class("ok", get=DELETE))  # no Protocol: not checked


def test_every_registered_built_in_class_passes_the_checks() -> None:
    from enclave_core.plugin.manager import get_plugin_manager

    plugins = get_plugin_manager()
    for capability in CAPABILITIES:
        reg = plugins.registry(capability)
        assert reg.names()
        for name in reg.names():
            assert backend_problems(reg.get(name), capability.protocol) == []


class NotASchema:
    pass


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (backend_class(name=DELETE), "no 'name'"),
        (backend_class(name=""), "'name' '' is not a name like 'my-backend'"),
        (backend_class(name="has space"), "'name' 'has space' is not a name like"),
        (backend_class(name=3), "'name' 3 is not a name like"),
        (backend_class(Options=DELETE), "no 'Options' (a nested marshmallow.Schema subclass)"),
        (backend_class(Options=NotASchema), "not a marshmallow.Schema subclass"),
        (backend_class(Options=marshmallow.Schema()), "not a marshmallow.Schema subclass"),
        (backend_class(from_options=DELETE), "no 'from_options(options, context)' classmethod"),
        (backend_class(from_options="later"), "'from_options' is not callable"),
        (backend_class(get=DELETE, list=DELETE), "missing Storage member(s): get, list"),
        (backend_class(put="not a method"), "not method(s): put"),
        (backend_class(delete=property(lambda self: None)), "not method(s): delete"),
    ],
    ids=[
        "no-name",
        "empty-name",
        "name-with-space",
        "name-not-a-string",
        "no-options",
        "options-not-a-schema",
        "options-a-schema-instance",
        "no-from-options",
        "from-options-not-callable",
        "missing-methods",
        "method-not-a-function",
        "method-a-property",
    ],
)
def test_an_invalid_class_is_refused_in_one_line_naming_the_plugin(
    cls: type, expected: str
) -> None:
    reg: BackendRegistry[Any] = BackendRegistry("storage")
    reg.set_current_plugin("bad-plugin")
    with pytest.raises(InvalidBackend) as info:
        reg.add(cls)
    message = str(info.value)
    assert isinstance(info.value, PluginError)
    assert "\n" not in message
    assert message.startswith(
        f"storage backend class {cls.__qualname__} from plugin 'bad-plugin' is invalid: "
    )
    assert expected in message
    assert reg.names() == []


def test_a_non_class_is_refused() -> None:
    reg: BackendRegistry[Any] = BackendRegistry(Capability.KMS)
    reg.set_current_plugin("bad-plugin")
    with pytest.raises(InvalidBackend, match=r"from plugin 'bad-plugin' is invalid: .* is not a"):
        reg.add(backend_class("k", Capability.KMS)())  # an instance, not the class


def test_every_problem_is_listed_at_once() -> None:
    problems = backend_problems(backend_class(Options=DELETE, get=DELETE), Storage)
    assert problems == [
        "no 'Options' (a nested marshmallow.Schema subclass)",
        "missing Storage member(s): get",
    ]
