"""The typed backend registry."""

from __future__ import annotations

from typing import Any

import pytest

from enclave_core.errors import BackendNotFound, DuplicateBackend
from enclave_core.plugin.registry import BackendRegistry


class Alpha:
    name = "alpha"


class AlsoAlpha:
    name = "alpha"


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
