"""`enclave config validate` and `enclave config show`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from enclave_core.plugin.manager import get_plugin_manager
from tests.helpers import cli


def write(folder: Path, text: str) -> Path:
    path = folder / "enclave.yaml"
    path.write_text(text)
    return path


def validate(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, list[str]]:
    code, out, err = cli(capsys, "config", "validate", "-c", str(path))
    return code, out, err.splitlines()


def test_a_three_line_file_is_valid(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nname: hello\nprefix: dev\n")
    assert validate(capsys, path) == (0, f"OK: {path}\n", [])


def test_a_symlinked_file_is_the_project_of_the_folder_it_sits_in(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As examples/hello/enclave.yaml, a link to the package template: its state and app stay
    beside the link (`enclave dev` there must not write into the installed package)."""
    template = write(tmp_path, "version: 1\nname: hello\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "enclave.yaml").symlink_to(template)
    monkeypatch.chdir(project)
    assert cli(capsys, "config", "validate") == (0, f"OK: {project / 'enclave.yaml'}\n", "")


def test_malformed_yaml_is_one_line_with_its_position(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "name: hello\nruntime:\n  port: 7073\n   tls: false\n")
    code, out, err = validate(capsys, path)
    assert (code, out) == (1, "")
    assert len(err) == 1
    assert re.fullmatch(
        rf"ERROR: {re.escape(str(path))}: malformed YAML at line 4, column \d+: .+", err[0]
    )


def test_unknown_backend_option_has_its_dotted_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Options are checked by the backend's own Options schema, after the file's shape.
    path = write(tmp_path, "name: hello\nstorage:\n  backend: local\n  options: {bukcet: b}\n")
    assert validate(capsys, path) == (
        1,
        "",
        [f"ERROR: {path} is invalid: storage.options.bukcet: Unknown field."],
    )


def test_every_error_is_on_its_own_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prefix: dev\nruntime: {port: not-a-port, colour: blue}\nsupervisor: {listen: nowhere}\n",
    )
    code, out, err = validate(capsys, path)
    assert (code, out) == (1, "")
    assert err[0] == f"ERROR: {path} is invalid:"
    assert sorted(err[1:]) == [
        "  name: Missing data for required field.",
        "  runtime.colour: Unknown field.",
        "  runtime.port: Not a valid integer.",
        "  supervisor.listen: must be HOST:PORT, for example 127.0.0.1:8443.",
    ]


def test_missing_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\n")
    assert validate(capsys, path)[2] == [
        f"ERROR: {path} is invalid: name: Missing data for required field."
    ]


def test_wrong_type(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "name: hello\napp: {command: python3 app.py}\n")
    assert validate(capsys, path)[2] == [
        f"ERROR: {path} is invalid: app.command: Not a valid list."
    ]


def test_production_refuses_the_local_backends(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "name: hello\nmode: production\n")
    code, _, err = validate(capsys, path)
    assert code == 1
    assert err[0] == f"ERROR: {path} is invalid:"
    problems = dict(line.strip().split(": ", 1) for line in err[1:])
    assert sorted(problems) == [
        "attestation.backend",
        "kms.backend",
        "launcher.backend",
        "secrets.backend",
        "storage.backend",
    ]
    assert all("development only" in message for message in problems.values())


def test_production_refuses_debug_mode(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "name: hello\nmode: production\nenclave: {debug_mode: true}\n")
    code, _, err = validate(capsys, path)
    assert code == 1 and err[0] == f"ERROR: {path} is invalid:"
    problems = dict(line.strip().split(": ", 1) for line in err[1:])
    assert "enclave.debug_mode" in problems  # beside the development backends' lines
    assert "PCR0 all zero" in problems["enclave.debug_mode"]


def test_unknown_backend_is_one_line_listing_installed_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "name: hello\nkms: {backend: hsm}\n")
    installed = ", ".join(get_plugin_manager().kms.names())
    assert "local" in installed
    assert validate(capsys, path)[2] == [
        f"ERROR: {path} is invalid: kms.backend: kms backend 'hsm' is not available; "
        f"installed: {installed} (is the plugin installed?)"
    ]


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = validate(capsys, tmp_path / "nope.yaml")
    assert code == 1
    assert err == [
        f"ERROR: {tmp_path / 'nope.yaml'}: no such file (run 'enclave init' to create one)"
    ]


def test_show_json_prints_env_references_never_values(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELLO_API_KEY", "s3cr3t-value-never-shown")
    monkeypatch.setenv("HELLO_REGION", "eu-west-1")
    document = {
        "name": "hello",
        "region": {"$env": "HELLO_REGION"},
        "app": {"env": {"API_KEY": {"$env": "HELLO_API_KEY"}}},
    }
    path = write(tmp_path, yaml.safe_dump(document))
    code, out, err = cli(capsys, "config", "show", "-c", str(path), "-f", "json")
    assert (code, err) == (0, "")
    assert "s3cr3t-value-never-shown" not in out
    shown = json.loads(out)
    assert shown["app"]["env"] == {"API_KEY": {"$env": "HELLO_API_KEY"}}
    assert shown["region"] == {"$env": "HELLO_REGION"}
    # Every default is filled in.
    limits = shown["runtime"].pop("limits")
    assert shown["runtime"] == {
        "port": 7073,
        "app_api_port": 7075,
        "control_port": 7076,
        "tls": True,
    }
    assert limits["max_connections"] > 500  # the defaults are shown too
    assert shown["storage"] == {"backend": "local", "options": {"path": ".enclave/storage"}}
    assert shown["supervisor"]["watchdog"]["backoff_max_s"] == 30


def test_show_table_and_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "name: hello\n")
    code, out, _ = cli(capsys, "config", "show", "-c", str(path))
    assert code == 0
    assert re.search(r"\| runtime\s+\| port: 7073\s+\|\n\|\s+\| app_api_port: 7075\s+\|", out)
    code, out, _ = cli(capsys, "config", "show", "-c", str(path), "-f", "yaml")
    assert code == 0
    assert yaml.safe_load(out)["runtime"]["app_api_port"] == 7075
    code, out, _ = cli(capsys, "config", "show", "-c", str(path), "-f", "value", "--column", "name")
    assert (code, out) == (0, "hello\n")
