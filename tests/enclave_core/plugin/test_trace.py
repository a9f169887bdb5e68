"""``ENCLAVE_TRACE_PLUGINS=1``: every hook call, its implementations and its timing on stderr."""

from __future__ import annotations

import io
import re
from typing import Any

import pluggy
import pytest

from enclave_core import hookimpl
from enclave_core.errors import PluginError
from enclave_core.plugin.capabilities import CAPABILITIES
from enclave_core.plugin.manager import (
    TRACE_ENV,
    TRACE_PREFIX,
    add_tracing,
    get_plugin_manager,
    trace_enabled,
)
from enclave_core.plugin.markers import PROJECT_NAME
from enclave_core.plugin.registry import BackendRegistry


class Early:
    @hookimpl(tryfirst=True)
    def enclave_register_storage(self, registry: BackendRegistry[Any]) -> None:
        pass


def trace_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(TRACE_PREFIX)]


def test_tracing_writes_each_hook_call_with_its_plugins_and_timing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TRACE_ENV, "1")
    get_plugin_manager(extra_plugins=[("early", Early())])
    lines = trace_lines(capsys.readouterr().err)
    assert len(lines) == 2 * len(CAPABILITIES)
    for capability, (call, done) in zip(
        CAPABILITIES, zip(lines[::2], lines[1::2], strict=True), strict=True
    ):
        assert call.startswith(
            f"{TRACE_PREFIX} {capability.hook}(registry=<{capability} registry>) "
            "implementations, in call order: "
        )
        assert re.fullmatch(
            rf"{re.escape(TRACE_PREFIX)} {capability.hook} done in \d+\.\d{{3}} ms", done
        )
    storage_call = lines[0]
    order = storage_call.split("in call order: ", 1)[1].split(", ")
    assert order[0] == "early (tryfirst)"
    assert {"local-storage", "s3-storage"} <= set(order)


def test_tracing_reports_a_failing_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Boom:
        @hookimpl
        def enclave_register_secrets(self) -> None:
            raise RuntimeError("down")

    monkeypatch.setenv(TRACE_ENV, "yes")
    with pytest.raises(PluginError):
        get_plugin_manager(extra_plugins=[("boom", Boom())])
    lines = trace_lines(capsys.readouterr().err)
    assert re.fullmatch(
        rf"{re.escape(TRACE_PREFIX)} enclave_register_secrets failed: RuntimeError: down in "
        r"\d+\.\d{3} ms",
        lines[-1],
    )


def test_no_tracing_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(TRACE_ENV, raising=False)
    get_plugin_manager()
    assert trace_lines(capsys.readouterr().err) == []


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("", False), ("0", False), ("false", False), ("Off", False), ("1", True), ("yes", True)],
)
def test_trace_enabled_values(value: str, enabled: bool) -> None:
    assert trace_enabled({TRACE_ENV: value}) is enabled
    assert trace_enabled({}) is False


def test_add_tracing_writes_to_a_stream_and_can_be_undone() -> None:
    class Spec:
        @pluggy.HookspecMarker(PROJECT_NAME)
        def ping(self) -> None: ...

    class Impl:
        @hookimpl(trylast=True)
        def ping(self) -> None: ...

    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(Spec)
    pm.register(Impl(), name="pinger")
    out = io.StringIO()
    undo = add_tracing(pm, out)
    pm.hook.ping()
    undo()
    pm.hook.ping()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0] == f"{TRACE_PREFIX} ping() implementations, in call order: pinger (trylast)"
    assert lines[1].startswith(f"{TRACE_PREFIX} ping done in ")
