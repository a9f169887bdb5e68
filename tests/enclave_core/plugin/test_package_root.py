"""The package root is the plugin authors' API, importable without an import cycle, and the
README's "Writing a plugin" example registers a valid backend as written."""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import enclave_core
from enclave_core.plugin import interfaces, markers, registry
from enclave_core.plugin.capabilities import capability_named
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.plugin.registry import backend_problems

ROOT = Path(__file__).resolve().parents[3]


def test_the_root_exports_the_plugin_authors_api() -> None:
    assert set(enclave_core.__all__) == {
        "PROJECT_NAME",
        "Attestation",
        "BackendContext",
        "BackendRegistry",
        "Kms",
        "Launcher",
        "Secrets",
        "Storage",
        "__version__",
        "hookimpl",
    }
    assert enclave_core.hookimpl is markers.hookimpl
    assert enclave_core.BackendRegistry is registry.BackendRegistry
    assert enclave_core.BackendContext is interfaces.BackendContext
    for name in ("Storage", "Secrets", "Kms", "Attestation", "Launcher"):
        assert getattr(enclave_core, name) is getattr(interfaces, name)
    assert re.fullmatch(r"\d+\.\d+\.\d+", enclave_core.__version__)


def _imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, ``TYPE_CHECKING`` and function-level ones too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "enclave_core" or name.startswith("enclave_core.")}


def _path_of(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_nothing_the_root_imports_imports_the_root_back() -> None:
    seen: dict[str, set[str]] = {}
    todo = sorted(_imports(ROOT / "enclave_core" / "__init__.py"))
    while todo:
        module = todo.pop()
        path = _path_of(module)
        if module in seen or path is None:
            continue
        seen[module] = _imports(path)
        todo.extend(seen[module])
    assert "enclave_core.plugin.markers" in seen
    offenders = sorted(module for module, imported in seen.items() if "enclave_core" in imported)
    assert offenders == []


def readme_plugin_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Writing a plugin") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("\n```", start)]


def test_the_readme_plugin_example_registers_as_written() -> None:
    module = types.ModuleType("readme_plugin_example")
    exec(compile(readme_plugin_example(), "README.md", "exec"), module.__dict__)  # noqa: S102
    plugins = get_plugin_manager(extra_plugins=[("readme-example", module)])
    registered = [row for row in plugins.backends() if row["plugin"] == "readme-example"]
    assert registered, "the README's example registers no backend"
    for row in registered:
        cls = plugins.registry(row["capability"]).get(row["name"])
        assert backend_problems(cls, capability_named(row["capability"]).protocol) == []
