"""The README's "Writing a plugin" example, run as written.

The code blocks are read from README.md itself, so this fails when the example breaks: the plugin
module (the python block with ``@hookimpl``) goes where the README's setup.cfg entry point says
(``my_package/sqlite_storage.py``), that setup.cfg block becomes the distribution's, with just a
name, a version and the package added, and the distribution is pip-installed for real. Then
``enclave plugin list`` shows it, ``storage: {backend: sqlite}`` validates and selects it, the
runtime's storage works on it, and the README's contract test (the python block subclassing a
contract) passes when pytest runs it in the distribution's folder, its fixtures supplied by the
``enclave`` pytest plugin through simple-enclave's ``pytest11`` entry point (no conftest).
"""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave_core.plugin.backends import build_backend, plugins_for
from enclave_core.plugin.interfaces import Storage
from enclave_core.testing import dev_config_document, write_config
from enclave_core.testing.contracts import StorageContract

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Writing a plugin"
DISTRIBUTION = "readme-example-plugin"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Example:
    """The README section's blocks: the plugin module, its setup.cfg part, the contract test."""

    module_source: str
    setup_cfg: str
    contract_test: str

    @property
    def entry_point(self) -> tuple[str, str]:
        """The (entry-point name, module) the setup.cfg block registers in the enclave group."""
        parser = configparser.ConfigParser()
        parser.read_string(self.setup_cfg)
        [line] = parser["options.entry_points"]["enclave"].strip().splitlines()
        name, _, module = line.partition("=")
        return name.strip(), module.strip()


def readme_example() -> Example:
    """Read the example's code blocks from the README's "Writing a plugin" section."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    blocks = _FENCE.findall(text[start : end if end != -1 else len(text)])
    python = [body for lang, body in blocks if lang == "python"]
    [module] = [body for body in python if "@hookimpl" in body]
    [contract] = [body for body in python if "Contract" in body and "@hookimpl" not in body]
    [ini] = [body for lang, body in blocks if lang == "ini" and "[options.entry_points]" in body]
    return Example(module_source=module, setup_cfg=ini, contract_test=contract)


def run(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``args`` with this interpreter in a fresh process (entry points read afresh)."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)  # the pytest11 plugin must load by itself
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The README's example as a distribution folder, pip-installed; uninstalled afterwards."""
    assert importlib.util.find_spec("setuptools") is not None, "pip needs setuptools to build it"
    example = readme_example()
    _, module = example.entry_point
    root = tmp_path_factory.mktemp("readme") / "dist"
    path = root.joinpath(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True)
    path.write_text(example.module_source, encoding="utf-8")
    packages = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
    for package in packages:
        root.joinpath(*package.split("."), "__init__.py").touch()
    (root / "setup.cfg").write_text(
        f"[metadata]\nname = {DISTRIBUTION}\nversion = 0.1.0\n\n"
        f"[options]\npackages =\n"
        + "".join(f"    {p}\n" for p in packages)
        + "\n"
        + example.setup_cfg,
        encoding="utf-8",
    )
    (root / "setup.py").write_text("from setuptools import setup\n\nsetup()\n", encoding="utf-8")
    tests = root / "tests"
    tests.mkdir()
    (tests / "test_readme_contract.py").write_text(example.contract_test, encoding="utf-8")

    installed = run(
        "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", ".", cwd=root
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    importlib.invalidate_caches()
    try:
        yield root
    finally:
        removed = run("-m", "pip", "uninstall", "-y", "-q", DISTRIBUTION, cwd=root)
        for name in [*packages, module]:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        assert removed.returncode == 0, removed.stdout + removed.stderr


def test_the_readme_example_is_complete() -> None:
    example = readme_example()
    assert example.entry_point == ("sqlite-storage", "my_package.sqlite_storage")
    assert "from my_package.sqlite_storage import SqliteStorage" in example.contract_test
    assert "...\n" not in example.module_source, "the example must be a whole backend"


def test_installed_example_is_listed_and_selected_by_name(
    distribution: Path, tmp_path: Path
) -> None:
    name, module = readme_example().entry_point
    listed = run("-m", "enclave_core.cli.main", "plugin", "list", "-f", "json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {
        "capability": "storage",
        "name": "sqlite",
        "plugin": name,
        "distribution": DISTRIBUTION,
        "version": "0.1.0",
    } in rows

    # `storage: {backend: sqlite}` selects it, as the README says.
    config = write_config(tmp_path / "app", dev_config_document(storage={"backend": "sqlite"}))
    assert config.path is not None
    validated = run(
        "-m", "enclave_core.cli.main", "config", "validate", "-c", str(config.path), cwd=tmp_path
    )
    assert (validated.returncode, validated.stdout.strip()) == (0, f"OK: {config.path}"), (
        validated.stderr
    )
    backend = build_backend(config, plugins_for(config), "storage")
    assert (type(backend).__module__, type(backend).__name__) == (module, "SqliteStorage")
    assert isinstance(backend, Storage)
    etag = backend.put("notes/a", b"one", if_none_match=True)
    assert (backend.get("notes/a").data, backend.get("notes/a").etag) == (b"one", etag)
    assert (config.base_dir / ".enclave" / "objects.sqlite3").is_file()


def test_the_readme_contract_test_passes_through_the_pytest11_plugin(distribution: Path) -> None:
    checks = sorted(n for n in dir(StorageContract) if n.startswith("test_"))
    collected = run(
        "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests", cwd=distribution
    )
    assert collected.returncode == 0, collected.stdout + collected.stderr
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert sorted(i.rpartition("::")[2] for i in ids) == checks
    assert all("::TestSqliteStorage::" in i for i in ids), ids

    result = run(
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--strict-markers",  # the enclave_contract marker is declared by the plugin
        "-m",
        "enclave_contract",
        "tests",
        cwd=distribution,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(checks)} passed" in result.stdout, result.stdout
