"""`enclave init`: the commented enclave.yaml, the example app, the templates' single copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from enclave_core.cli.init import template_text
from enclave_core.cli.main import main
from enclave_core.config import ConfigSchema, load_config
from tests.helpers import cli

REPO = Path(__file__).resolve().parents[3]
TEMPLATES = REPO / "enclave_core" / "templates"
EXAMPLE = REPO / "examples" / "hello"


def test_init_writes_the_config_and_the_app(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "My Shop"
    code, out, err = cli(capsys, "init", str(folder))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"wrote {folder / 'enclave.yaml'}",
        f"wrote {folder / 'app.py'}",
        f"Next: cd {folder} && enclave dev",
    ]
    assert (folder / "app.py").read_bytes() == (TEMPLATES / "app.py").read_bytes()
    config = load_config(folder / "enclave.yaml")
    assert config.name == "my-shop"  # derived from the folder's name


def test_the_written_config_is_commented_and_has_every_section(tmp_path: Path) -> None:
    assert main(["init", str(tmp_path)]) == 0
    text = (tmp_path / "enclave.yaml").read_text()
    document = yaml.safe_load(text)
    assert set(document) == set(
        ConfigSchema().fields
    )  # every section of the README's enclave.yaml reference
    assert document["runtime"]["tls"] is True
    assert document["supervisor"]["ingress"] == [{"listen": "127.0.0.1:8080", "port": 7073}]
    assert document["runtime"]["port"] == 7073
    assert document["secrets"]["static"] == [{"name": "signing_key", "env_var": "APP_SIGNING_KEY"}]
    assert document["app"]["health_path"] == "/health"
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    inline = [line for line in text.splitlines() if "  # " in line]
    assert len(comments) >= 10 and len(inline) >= 10


def test_the_written_config_validates(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["init", str(tmp_path)]) == 0
    capsys.readouterr()
    code, out, err = cli(capsys, "config", "validate", "-c", str(tmp_path / "enclave.yaml"))
    assert (code, out, err) == (0, f"OK: {tmp_path / 'enclave.yaml'}\n", "")


def test_init_refuses_to_overwrite_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text("print('mine')\n")
    code, out, err = cli(capsys, "init", str(tmp_path))
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"ERROR: {tmp_path / 'app.py'} already exists (use --force to overwrite it)"
    ]
    assert (tmp_path / "app.py").read_text() == "print('mine')\n"
    assert not (tmp_path / "enclave.yaml").exists()  # nothing written when anything exists

    code, _, _ = cli(capsys, "init", str(tmp_path), "--force")
    assert code == 0
    assert (tmp_path / "app.py").read_text() == template_text("app.py")


def test_init_in_the_current_folder_and_to_a_named_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["init"]) == 0
    assert load_config(here / "enclave.yaml").name == "here"
    assert (here / "app.py").exists()

    target = tmp_path / "elsewhere" / "stack.yaml"
    assert main(["init", "-c", str(target)]) == 0
    assert load_config(target).name == "elsewhere"
    assert (target.parent / "app.py").exists()
    capsys.readouterr()

    code, _, err = cli(capsys, "init", str(tmp_path), "-c", str(target))
    assert code == 1
    assert err.splitlines() == ["ERROR: give DIR or -c FILE to `enclave init`, not both"]


def test_example_is_the_template(tmp_path: Path) -> None:
    # One source of truth: examples/hello is exactly what `enclave init` writes.
    assert (EXAMPLE / "app.py").read_bytes() == (TEMPLATES / "app.py").read_bytes()
    assert (EXAMPLE / "enclave.yaml").read_bytes() == (TEMPLATES / "enclave.yaml").read_bytes()
    assert template_text("app.py") == (TEMPLATES / "app.py").read_text()
    config = load_config(EXAMPLE / "enclave.yaml")
    assert config.name == "hello"
    assert (EXAMPLE / "README.md").read_text().count("\n") <= 4


# -- templates -----------------------------------------------------------------------------------
FALCON = TEMPLATES / "falcon"
FALCON_FILES = ["enclave.yaml", "app.py", "gunicorn.conf.py", "requirements.txt"]


def test_list_shows_each_template_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "init", "--list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["hello", "falcon"]
    assert lines[0].endswith("(default)") and "gunicorn" in lines[1]
    assert list(tmp_path.iterdir()) == []


def test_template_falcon_writes_the_falcon_app(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    code, out, err = cli(capsys, "init", str(folder), "--template", "falcon")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        *(f"wrote {folder / name}" for name in FALCON_FILES),
        f"Next: cd {folder} && enclave dev",
    ]
    for name in FALCON_FILES[1:]:
        assert (folder / name).read_bytes() == (FALCON / name).read_bytes()
    assert template_text("gunicorn.conf.py", "falcon") == (FALCON / "gunicorn.conf.py").read_text()
    config = load_config(folder / "enclave.yaml")
    assert config.name == "notes"
    assert config.app.command == ["python3", "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"]
    assert config.app.health_path == "/health"
    requirements = (folder / "requirements.txt").read_text().split()
    assert {line.split("==")[0] for line in requirements if not line.startswith("#")} >= {
        "falcon",
        "gunicorn",
    }
    capsys.readouterr()
    code, out, err = cli(capsys, "config", "validate", "-c", str(folder / "enclave.yaml"))
    assert (code, err) == (0, "")


def test_template_falcon_refuses_to_overwrite_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "gunicorn.conf.py").write_text("workers = 99\n")
    code, out, err = cli(capsys, "init", str(tmp_path), "-t", "falcon")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"ERROR: {tmp_path / 'gunicorn.conf.py'} already exists (use --force to overwrite it)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gunicorn.conf.py"]  # nothing written
    assert cli(capsys, "init", str(tmp_path), "-t", "falcon", "--force")[0] == 0
    assert (tmp_path / "gunicorn.conf.py").read_bytes() == (
        FALCON / "gunicorn.conf.py"
    ).read_bytes()


def test_an_unknown_template_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = cli(capsys, "init", str(tmp_path), "--template", "django")
    assert (code, out) == (2, "")
    assert "invalid choice: 'django'" in err
    assert list(tmp_path.iterdir()) == []


def test_falcon_example_is_the_template() -> None:
    # examples/falcon links to the package's files, as examples/hello does.
    example = REPO / "examples" / "falcon"
    for name in FALCON_FILES:
        assert (example / name).read_bytes() == (FALCON / name).read_bytes(), name
    assert load_config(example / "enclave.yaml").name == "falcon"
    assert (example / "README.md").read_text().count("\n") <= 4


def test_falcon_config_differs_from_hello_only_in_name_and_app() -> None:
    """The falcon enclave.yaml is a whole commented file; all but its app: section is hello's."""

    def without_app(text: str) -> str:
        start = text.index("# Your HTTP app")
        return text[:start] + text[text.index("# The runtime's listeners") :]

    hello = (TEMPLATES / "enclave.yaml").read_text()
    falcon = (FALCON / "enclave.yaml").read_text()
    assert without_app(falcon).replace("name: falcon ", "name: hello  ", 1) == without_app(hello)
