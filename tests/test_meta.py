"""Meta tests: the docs, the entry points and the import boundaries stay true."""

from __future__ import annotations

import ast
import configparser
import inspect
import re
from pathlib import Path

import pytest

from enclave_core.plugin import hookspecs
from enclave_core.plugin.manager import get_plugin_manager

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


# --- The project is the whole tree: nothing it runs reads beside the clone ------------------------

#: Build, cache and tool folders: not the project's files.
_NOT_PROJECT = {
    ".git",
    ".tox",
    ".enclave",
    "node_modules",
    "build",
    "dist",
    "__pycache__",
    "cdk.out",
}
#: Names of project-root paths in the tests, scripts and benchmarks.
_ROOT_NAMES = r"(?:ROOT|REPO|REPO_ROOT|PROJECT|PROJECT_ROOT|TOP)"
#: Text that names the folder beside the clone, however it is spelled. Built from pieces so that
#: this file does not match itself.
_OUTSIDE = [
    re.compile(r"\.\./+" + "shared"),
    re.compile("shared" + r"/+testdata"),
    re.compile(r"\bENCLAVE_NITRO_" + "TESTDATA"),
    re.compile(r"\{toxinidir\}/+\.\."),
    re.compile(r"['\"]/work/"),
    re.compile(rf"\b{_ROOT_NAMES}\s*\.\s*parents?\b"),
    re.compile(rf"\b{_ROOT_NAMES}\s*/\s*['\"]\.\."),
]
_PARENTS_INDEX = re.compile(r"__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]((?:\.parent\b)*)")
_PARENT_CHAIN = re.compile(r"__file__\)(?:\.resolve\(\))?((?:\.parent)+)\b")
_MD_LINK = re.compile(r"\]\((\.\.[^)#\s]*)")


def project_text_files() -> list[Path]:
    """Every text file of the project, tracked or not (build and tool folders left out)."""
    files = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in _NOT_PROJECT or part.endswith(".egg-info") for part in rel.parts):
            continue
        if not path.is_file() or path.is_symlink():
            continue
        try:
            files.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue  # binary data (attestation documents, the root zip)
    return files


def outside_references(path: Path, text: str) -> list[str]:
    """The places in one file that reach beyond the repository's root."""
    found = [f"{path}: {m.group(0)!r}" for pattern in _OUTSIDE for m in pattern.finditer(text)]
    depth = len(path.relative_to(ROOT).parts) - 1  # parents[depth] of a file is the root
    for m in _PARENTS_INDEX.finditer(text):
        if int(m.group(1)) + m.group(2).count(".parent") > depth:
            found.append(f"{path}: {m.group(0)} climbs above the repository")
    for m in _PARENT_CHAIN.finditer(text):
        if m.group(1).count(".parent") > depth + 1:
            found.append(f"{path}: {m.group(0)} climbs above the repository")
    if path.suffix == ".md":
        for m in _MD_LINK.finditer(text):
            target = (path.parent / m.group(1)).resolve()
            if not target.is_relative_to(ROOT):
                found.append(f"{path}: link {m.group(1)} leaves the repository")
    return found


def test_nothing_in_the_project_reads_outside_the_repository() -> None:
    """A user's clone is the whole project: tests, benchmarks and scripts use only its own files."""
    this = Path(__file__).resolve()  # its examples below are the ways out, on purpose
    files = [(path, text) for path, text in project_text_files() if path != this]
    found = [hit for path, text in files for hit in outside_references(path, text)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("relpath", "text"),
    [
        ("tests/x/test_a.py", "DATA = Path('../" + "shared/nitro')\n"),
        ("tests/x/test_a.py", "DATA = 'beside/" + "shared" + "/testdata'\n"),
        ("tests/x/test_a.py", "X = REPO_ROOT.parent / 'elsewhere'\n"),
        ("tests/x/test_a.py", "X = Path(__file__).resolve().parents[3] / 'data'\n"),
        ("bench/b.py", "X = Path(__file__).parent.parent.parent\n"),
        ("tests/x/test_a.py", "X = Path(__file__).resolve().parents[2].parent / 'x'\n"),
        ("docs/a.md", "see [the design](../../DESIGN.md)\n"),
        ("tox.ini", "commands = cat {toxinidir}/../notes\n"),
    ],
)
def test_the_outside_check_finds_each_way_out(relpath: str, text: str) -> None:
    assert outside_references(ROOT / relpath, text)


@pytest.mark.parametrize(
    ("relpath", "text"),
    [
        ("tests/x/test_a.py", "X = Path(__file__).resolve().parents[2] / 'examples'\n"),
        ("bench/b.py", "X = Path(__file__).parent.parent\n"),
        ("docs/a.md", "see [the README](../README.md)\n"),
        (
            "tests/x/test_a.py",
            "bad = 'a/../../etc/passwd'  # an attack input, not a path we read\n",
        ),
    ],
)
def test_the_outside_check_lets_the_tree_alone(relpath: str, text: str) -> None:
    assert not outside_references(ROOT / relpath, text)


_UNSHIPPED_DOCS = re.compile(r"\bDESIGN\b(?:\.md)?|prior-art|nitro-attestation\.md")


def test_code_cites_only_documents_the_project_ships() -> None:
    """Comments and docstrings point readers at the README and docs/, which every clone has."""
    this = Path(__file__).resolve()
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path, text in project_text_files()
        if path.suffix in (".py", ".ts", ".sh", ".cfg", ".ini", ".toml") and path != this
        for number, line in enumerate(text.splitlines(), 1)
        if _UNSHIPPED_DOCS.search(line)
    ]
    assert not found, "\n".join(found)


def test_every_test_the_threat_model_names_exists() -> None:
    """docs/threat-model.md proves each property with named tests: they must be real."""
    text = (ROOT / "docs" / "threat-model.md").read_text(encoding="utf-8")
    by_name = {path.name: path for path in (ROOT / "tests").rglob("test_*.py")}
    named: list[tuple[str, str | None]] = []
    current = None
    for match in re.finditer(r"`(?:(?:tests/[\w/]+/)?(test_\w+\.py))?(?:::(test_\w+))?`", text):
        file, test = match.group(1), match.group(2)
        if file is None and test is None:
            continue
        current = file or current
        assert current is not None, f"{match.group(0)} names a test before any file"
        named.append((current, test))
    assert len(named) >= 15
    for file, test in named:
        assert file in by_name, f"docs/threat-model.md names {file}, which does not exist"
        if test is not None:
            source = by_name[file].read_text(encoding="utf-8")
            assert re.search(rf"def {test}\(", source), f"{file} has no {test}"
