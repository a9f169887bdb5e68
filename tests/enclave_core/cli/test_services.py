"""`enclave runtime` and `enclave supervisor`: config problems end them with one ERROR line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from enclave_core.cli.main import main
from enclave_core.config import Config
from enclave_core.plugin.manager import get_plugin_manager


@pytest.mark.parametrize("command", ["runtime", "supervisor"])
def test_a_missing_config_is_one_error_line(
    command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "enclave.yaml"
    code = main([command, "-c", str(path)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"ERROR: {path}: no such file (run 'enclave init' to create one)"]


def test_supervisor_with_an_unknown_launcher_names_the_installed_ones(
    capsys: pytest.CaptureFixture[str], make_config: Callable[..., Config]
) -> None:
    config = make_config(launcher={"backend": "qemu"})
    code = main(["supervisor", "-c", str(config.path)])
    _, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines() == [
        f"ERROR: launcher backend 'qemu' is not available; installed: "
        f"{', '.join(get_plugin_manager().launcher.names())} (is the plugin installed?)"
    ]
