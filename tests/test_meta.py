"""Meta tests: the docs, the entry points and the import boundaries stay true."""

from __future__ import annotations

import ast
import configparser
import inspect
import re
from pathlib import Path

from enclave_core import hookspecs
from enclave_core.manager import get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("enclave_"))


def test_five_registration_hooks() -> None:
    assert HOOKS == [
        "enclave_register_attestation",
        "enclave_register_kms",
        "enclave_register_launcher",
        "enclave_register_secrets",
        "enclave_register_storage",
    ]
    pm = get_plugin_manager().pm
    assert sorted(n for n in dir(pm.hook) if n.startswith("enclave_")) == HOOKS


def test_every_hook_is_documented_in_the_readme_with_its_signature() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"#### `{name}({params})`" in readme, name
        assert getattr(hookspecs, name).__doc__, name


def test_every_hook_has_a_test() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("test_*.py"))
    for name in HOOKS:
        assert re.search(rf"def test_hook_{name}\b", text), name


def test_entry_points_match_the_plugin_modules() -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["enclave"].strip().splitlines()
    targets = {line.split("=", 1)[1].strip() for line in lines}
    modules = {
        f"enclave_plugins.{p.stem}" for p in (ROOT / "plugins").glob("*.py") if p.stem != "__init__"
    }
    assert targets == modules


def test_core_never_imports_a_plugin() -> None:
    for path in (ROOT / "enclave_core").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(("enclave_plugins", "plugins")), f"{path}: {name}"


def test_each_plugin_module_documents_its_options() -> None:
    for path in (ROOT / "plugins").glob("*.py"):
        if path.stem == "__init__":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert "Options" in doc or "options" in doc, f"{path.name} docstring must document options"
