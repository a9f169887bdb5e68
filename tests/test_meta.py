"""Meta tests: the docs, the entry points and the import boundaries stay true."""

from __future__ import annotations

import ast
import configparser
import importlib
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


# --- Import boundaries: no cycle, and each family imports only what is below it ---------------

#: The project's import packages and the folders they install from.
PACKAGES = {"enclave_core": "enclave_core", "enclave_plugins": "plugins", "enclave_infra": "infra"}


def project_modules() -> dict[str, Path]:
    """Every module of the project by its dotted name (a package by its ``__init__``)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            if "templates" in rel.parts:  # copied into users' apps, never imported
                continue
            parts = [package, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, source: str, modules: dict[str, Path]) -> set[str]:
    """The project modules ``source`` imports: every import statement, those under
    ``TYPE_CHECKING`` and those inside functions included."""
    is_package = modules.get(name, Path()).name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join([*here[: len(here) - node.level + 1], *filter(None, [base])])
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {
        name: imported_modules(name, path.read_text(encoding="utf-8"), modules)
        for name, path in modules.items()
    }


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for name in graph[todo.pop()] - seen:
            seen.add(name)
            todo.append(name)
    return seen


def family_imports(
    graph: dict[str, set[str]], family: str, forbidden: tuple[str, ...]
) -> list[str]:
    """``importer -> imported`` for each module of ``family`` that reaches a forbidden one."""
    bad = []
    for name in sorted(graph):
        if name == family or name.startswith(family + "."):
            for target in sorted(reachable(graph, name)):
                if target.startswith(forbidden):
                    bad.append(f"{name} -> {target}")
    return bad


def test_no_import_cycle_among_the_projects_modules() -> None:
    assert import_cycles(import_graph()) == []


def test_the_cycle_check_counts_type_checking_and_lazy_imports() -> None:
    modules = {name: Path(f"{name}.py") for name in ("p.a", "p.b", "p.c")}
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import B\n"
    lazy = "def f():\n    from p.c import C\n"
    graph = {
        "p.a": imported_modules("p.a", typing_only, modules),
        "p.b": imported_modules("p.b", lazy, modules),
        "p.c": imported_modules("p.c", "import p.a\n", modules),
    }
    assert graph == {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}
    assert import_cycles(graph) == [["p.a", "p.b", "p.c"]]
    assert import_cycles({"p.a": {"p.b"}, "p.b": set(), "p.c": {"p.b"}}) == []


def test_the_runtime_never_imports_the_supervisor_or_the_cli() -> None:
    forbidden = ("enclave_core.supervisor", "enclave_core.cli", "enclave_core.deploy")
    assert family_imports(import_graph(), "enclave_core.runtime", forbidden) == []


def test_the_verifier_never_imports_the_runtime() -> None:
    graph = import_graph()
    forbidden = ("enclave_core.runtime", "enclave_core.supervisor")
    assert family_imports(graph, "enclave_core.verify", forbidden) == []
    assert family_imports(graph, "enclave_core.cli.verify", forbidden) == []


@pytest.mark.parametrize(
    "family",
    [
        "enclave_core.plugin",
        "enclave_core.aws",
        "enclave_core.kmspolicy",
        "enclave_core.crypto",
        "enclave_core.protocol",
        "enclave_core.http",
        "enclave_core.streams",
        "enclave_core.image",
    ],
)
def test_the_shared_families_import_no_process(family: str) -> None:
    processes = ("enclave_core.runtime", "enclave_core.supervisor", "enclave_core.cli")
    assert family_imports(import_graph(), family, (*processes, "enclave_core.deploy")) == []


def test_core_never_imports_a_plugin() -> None:
    graph = import_graph()
    core = [name for name in graph if name.split(".")[0] == "enclave_core"]
    assert [f"{n} -> {t}" for n in core for t in graph[n] if t.startswith("enclave_plugins")] == []
    for path in (ROOT / "enclave_core").rglob("*.py"):  # nor by a name outside the package map
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import) (enclave_)?plugins\b", text, re.M), path


def test_each_plugin_module_documents_its_options() -> None:
    """Each backend's docstring has ``Options (``<capability>.options``...`` naming every field."""
    for path in sorted((ROOT / "plugins").glob("*.py")):
        if path.stem == "__init__":
            continue
        module = importlib.import_module(f"enclave_plugins.{path.stem}")
        doc = module.__doc__ or ""
        hooks = [name for name in dir(module) if name.startswith("enclave_register_")]
        assert len(hooks) == 1, f"{path.name}: one backend per plugin module"
        capability = hooks[0].removeprefix("enclave_register_")
        assert f"Options (``{capability}.options``" in doc, path.name
        backends = [
            cls
            for cls in vars(module).values()
            if inspect.isclass(cls)
            and cls.__module__ == module.__name__
            and hasattr(cls, "Options")
        ]
        assert len(backends) == 1, path.name
        for field in backends[0].Options().fields:
            assert f"``{field}``" in doc, f"{path.name}: option {field!r} is not documented"


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
