"""A third-party plugin distribution, pip-installed for real, provides a storage backend.

`tests/fixtures/memory_plugin/` is its own distribution (`simple-enclave-memory-plugin`, own
setup.cfg) registering a storage backend named `memory` through the `enclave` entry-point group.
Installed, it is listed, selected by `storage: {backend: memory}` and used (encrypted) by the
runtime's boot; uninstalled, the same config becomes a one-line error listing the installed names.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from enclave_core.config import Config
from enclave_core.errors import NotFound, PreconditionFailed
from enclave_core.plugin.backends import build_backend, plugins_for
from enclave_core.plugin.interfaces import Storage

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "memory_plugin"
DISTRIBUTION = "simple-enclave-memory-plugin"
MODULE = "enclave_memory_plugin"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    """Run pip in the interpreter running the tests."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300, env=env
    )


def enclave(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter, which sees the installed entry points afresh."""
    return subprocess.run(
        [sys.executable, "-m", "enclave_core.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


@pytest.fixture
def install_memory_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], None]]:
    """Install the fixture distribution; yield a function that uninstalls it; always uninstall."""
    assert importlib.util.find_spec("setuptools") is not None, "pip needs setuptools to build it"
    # Build from a copy so pip's build/ and *.egg-info never land in the repository.
    source = tmp_path_factory.mktemp("dist") / "memory_plugin"
    shutil.copytree(FIXTURE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = pip("install", "--no-deps", "--no-build-isolation", "-q", str(source))
    assert result.returncode == 0, result.stdout + result.stderr

    def uninstall() -> None:
        result = pip("uninstall", "-y", "-q", DISTRIBUTION)
        assert result.returncode == 0, result.stdout + result.stderr
        sys.modules.pop(MODULE, None)
        importlib.invalidate_caches()

    importlib.invalidate_caches()
    try:
        yield uninstall
    finally:
        if pip("show", "-q", DISTRIBUTION).returncode == 0:
            uninstall()


def memory_config(make_config: Callable[..., Config]) -> Config:
    return make_config(storage={"backend": "memory", "options": {}})


def test_installed_plugin_is_listed_selected_used_then_missing_once_uninstalled(
    install_memory_plugin: Callable[[], None],
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    config = memory_config(make_config)
    assert config.path is not None

    listed = enclave("plugin", "list", "-f", "json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {
        "capability": "storage",
        "name": "memory",
        "plugin": "memory-storage",
        "distribution": DISTRIBUTION,
        "version": "0.1.0",
    } in rows
    owners = {(row["capability"], row["name"]): row["distribution"] for row in rows}
    assert owners[("storage", "local")] == "simple-enclave"

    validated = enclave("config", "validate", "-c", str(config.path), cwd=tmp_path)
    assert (validated.returncode, validated.stdout.strip()) == (0, f"OK: {config.path}")

    # Selected by name, built through its Options schema and from_options.
    plugins = plugins_for(config)
    backend = build_backend(config, plugins, "storage")
    assert type(backend).__module__ == MODULE and backend.name == "memory"
    assert isinstance(backend, Storage)
    etag = backend.put("a", b"one", if_none_match=True)
    assert backend.get("a").data == b"one" and backend.get("a").etag == etag

    # The runtime's boot selects it and wraps it in envelope encryption.
    from enclave_core.runtime.boot import run_boot
    from enclave_core.runtime.state import RuntimeState

    state = RuntimeState(config=config)
    assert asyncio.run(run_boot(state, plugins, None)), state.boot_error
    assert state.raw_storage is not None and type(state.raw_storage).__module__ == MODULE
    assert state.storage is not None
    new_etag = state.storage.put("notes/greeting", b"hello from the memory plugin")
    stored = state.storage.get("notes/greeting")
    assert (stored.data, stored.etag) == (b"hello from the memory plugin", new_etag)
    ciphertext = state.raw_storage.get("notes/greeting")
    assert ciphertext.etag == new_etag
    assert b"hello from the memory plugin" not in ciphertext.data

    install_memory_plugin()  # uninstall

    relisted = enclave("plugin", "list", "-f", "json", cwd=tmp_path)
    assert relisted.returncode == 0, relisted.stderr
    assert all(row["name"] != "memory" for row in json.loads(relisted.stdout))
    broken = enclave("config", "validate", "-c", str(config.path), cwd=tmp_path)
    assert broken.returncode == 1
    assert broken.stdout == ""
    lines = broken.stderr.splitlines()
    assert len(lines) == 1, broken.stderr
    assert lines[0].startswith("ERROR: ")
    assert "'memory' is not available" in lines[0]
    assert "installed: local" in lines[0]
    assert "Traceback" not in broken.stderr


def test_disabling_a_plugin_removes_its_backend(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = make_config(plugins={"disable": ["local-storage"]})
    assert config.path is not None
    assert "local" not in plugins_for(config).storage.names()
    assert "local" in plugins_for(config).kms.names()

    listed = enclave("plugin", "list", "-c", str(config.path), "-f", "json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    pairs = {(row["capability"], row["name"]) for row in json.loads(listed.stdout)}
    assert ("storage", "local") not in pairs and ("kms", "local") in pairs

    validated = enclave("config", "validate", "-c", str(config.path), cwd=tmp_path)
    assert validated.returncode == 1
    remaining = ", ".join(plugins_for(config).storage.names()) or "none"
    assert validated.stderr.splitlines() == [
        f"ERROR: {config.path} is invalid: storage.backend: storage backend 'local' is not "
        f"available; installed: {remaining} (is the plugin installed?)"
    ]


def load_fixture_module() -> ModuleType:
    """Import the fixture's module from its file, without installing it."""
    spec = importlib.util.spec_from_file_location(
        "memory_plugin_under_test", FIXTURE / f"{MODULE}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memory_backend_keeps_the_storage_contract() -> None:
    storage = load_fixture_module().MemoryStorage()
    assert isinstance(storage, Storage)
    with pytest.raises(NotFound):
        storage.get("missing")
    first = storage.put("k/1", b"v1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        storage.put("k/1", b"other", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        storage.put("k/1", b"other", if_match='"not-the-etag"')
    assert storage.get("k/1").data == b"v1"
    second = storage.put("k/1", b"v2", if_match=first)
    assert second != first and storage.get("k/1").etag == second
    with pytest.raises(PreconditionFailed):
        storage.put("absent", b"x", if_match=first)
    storage.put("k/2", b"x")
    storage.put("other", b"y")
    assert storage.list("k/") == ["k/1", "k/2"]
    assert storage.delete("k/1") is True and storage.delete("k/1") is False
    assert storage.list() == ["k/2", "other"]
