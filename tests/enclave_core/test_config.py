"""enclave.yaml loading: defaults, $env references, dotted-path errors, production rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave_core.config import ConfigError, effective_config, load_config, parse_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "enclave.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_three_line_file_gets_every_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "version: 1\nname: hello\n"))
    assert config.name == "hello"
    assert config.prefix == "dev"
    assert config.mode == "development"
    assert config.region == "us-east-1"
    assert config.instance_type == "m6i.xlarge"
    assert (config.enclave.cpu_count, config.enclave.memory_mib, config.enclave.cid) == (
        2,
        4096,
        16,
    )
    assert config.enclave.eif == "artifacts/image.eif" and config.enclave.debug_mode is False
    assert config.app.command == ["python3", "app.py"] and config.app.port == 7074
    assert (config.runtime.port, config.runtime.app_api_port, config.runtime.control_port) == (
        7073,
        7075,
        7076,
    )
    assert config.runtime.tls is True
    assert config.storage.backend == "local"
    assert config.storage.options == {"path": ".enclave/storage"}
    assert (config.secrets.backend, config.kms.backend) == ("local", "local")
    assert config.attestation.backend == "simulated"
    assert config.launcher.backend == "process"
    assert config.supervisor.listen == "127.0.0.1:8443"
    assert [(i.listen, i.port) for i in config.supervisor.ingress] == [("0.0.0.0:443", 7073)]
    wd = config.supervisor.watchdog
    assert (wd.interval_s, wd.backoff_initial_s, wd.backoff_max_s, wd.unhealthy_after) == (
        1,
        1,
        30,
        3,
    )
    assert (config.egress.port, config.egress.imds_port) == (8001, 8002)
    assert config.egress.allow[0] == "kms.{region}.amazonaws.com:443"
    assert config.plugins.disable == []
    assert config.state_dir == tmp_path / ".enclave"
    assert config.secrets_path == "/dev/hello/"


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    config = load_config(write(tmp_path, "name: a\napp: {dir: sub}\n"))
    assert config.app_dir == (tmp_path / "sub").resolve()


def test_each_error_on_its_own_dotted_line(tmp_path: Path) -> None:
    text = (
        "name: Bad_Name\nstorage: {bukcet: x}\napp: {port: nope}\n"
        "supervisor: {watchdog: {interval_s: []}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    lines = info.value.errors
    assert "storage.bukcet: Unknown field." in lines
    assert "app.port: Not a valid integer." in lines
    assert any(line.startswith("name: must match") for line in lines)
    assert any(line.startswith("supervisor.watchdog.interval_s:") for line in lines)
    assert len(lines) == 4


def test_missing_name_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "version: 1\n"))
    assert info.value.errors == ["name: Missing data for required field."]


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "name: a\napp: [unclosed\n"))
    message = str(info.value)
    assert "malformed YAML at line" in message and "column" in message
    assert "\n" not in message


def test_production_refuses_development_backends(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "name: a\nmode: production\n"))
    lines = info.value.errors
    for capability in ("storage", "secrets", "kms", "attestation", "launcher"):
        assert any(line.startswith(f"{capability}.backend: ") for line in lines), lines
    assert all("development only" in line for line in lines)


def test_production_accepts_production_backends(tmp_path: Path) -> None:
    text = (
        "name: a\nmode: production\nstorage: {backend: s3}\nsecrets: {backend: ssm}\n"
        "kms: {backend: aws}\nattestation: {backend: nitro}\nlauncher: {backend: nitro-cli}\n"
    )
    assert load_config(write(tmp_path, text)).mode == "production"


def test_production_refuses_debug_mode(tmp_path: Path) -> None:
    # A debug-mode enclave reports PCR0 all zero, which no production key may be locked to.
    text = (
        "name: a\nmode: production\nstorage: {backend: s3}\nsecrets: {backend: ssm}\n"
        "kms: {backend: aws}\nattestation: {backend: nitro}\nlauncher: {backend: nitro-cli}\n"
        "enclave: {debug_mode: true}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    (line,) = info.value.errors
    assert line.startswith("enclave.debug_mode: ") and "mode: production" in line
    assert "PCR0 all zero" in line
    development = "name: a\nenclave: {debug_mode: true}\n"
    assert load_config(write(tmp_path, development)).enclave.debug_mode is True


def test_env_references_resolve_and_show_as_references(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREETING_VALUE", "very-secret-greeting")
    config = load_config(
        write(tmp_path, 'name: a\napp: {env: {GREETING: {"$env": GREETING_VALUE}}}\n')
    )
    assert config.app.env == {"GREETING": "very-secret-greeting"}
    shown = effective_config(config)
    assert shown["app"]["env"] == {"GREETING": {"$env": "GREETING_VALUE"}}
    assert "very-secret-greeting" not in repr(shown)


def test_missing_env_variable_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, 'name: a\nregion: {"$env": NOT_SET_ANYWHERE}\n'))
    assert info.value.errors == ["region: environment variable NOT_SET_ANYWHERE is not set."]


def test_duplicate_static_secrets_rejected() -> None:
    doc = {
        "name": "a",
        "secrets": {"static": [{"name": "k", "env_var": "A"}, {"name": "k", "env_var": "B"}]},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base_dir=Path("."))
    assert info.value.errors == ["secrets.static: static secret names must be unique."]


def test_missing_file_and_allow_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "enclave.yaml")
    folder = tmp_path / "My_App"
    folder.mkdir()
    config = load_config(folder / "enclave.yaml", allow_missing=True)
    assert config.name == "my-app"


def test_a_dangling_symlink_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    """A copy that broke a relative link must not run silently with no secrets declared."""
    (tmp_path / "enclave.yaml").symlink_to("../templates/enclave.yaml")
    for allow_missing in (False, True):
        with pytest.raises(ConfigError, match=r"a symlink to \.\./templates/enclave\.yaml, which"):
            load_config(tmp_path / "enclave.yaml", allow_missing=allow_missing)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_limits_default_per_block(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "name: a\n"))
    runtime, supervisor = config.runtime.limits, config.supervisor.limits
    assert (runtime.max_header_bytes, runtime.max_body_bytes) == (16384, 16 * 1024 * 1024)
    assert (supervisor.max_header_bytes, supervisor.max_body_bytes) == (16384, 1024 * 1024)
    for limits in (runtime, supervisor):
        assert (limits.header_timeout_s, limits.request_timeout_s, limits.idle_timeout_s) == (
            20,
            300,
            60,
        )
        assert limits.max_connections == 1024
    shown = effective_config(config)
    assert shown["runtime"]["limits"]["max_body_bytes"] == 16 * 1024 * 1024
    assert shown["supervisor"]["limits"]["max_connections"] == 1024


def test_limits_are_read_under_runtime_and_supervisor(tmp_path: Path) -> None:
    text = (
        "name: a\n"
        "runtime: {limits: {max_body_bytes: 2048, header_timeout_s: 0.5, max_connections: 4}}\n"
        "supervisor: {limits: {idle_timeout_s: 2.5, max_header_bytes: 8192}}\n"
    )
    config = load_config(write(tmp_path, text))
    runtime, supervisor = config.runtime.limits, config.supervisor.limits
    assert (runtime.max_body_bytes, runtime.header_timeout_s, runtime.max_connections) == (
        2048,
        0.5,
        4,
    )
    assert runtime.idle_timeout_s == 60 and runtime.max_header_bytes == 16384
    assert (supervisor.idle_timeout_s, supervisor.max_header_bytes) == (2.5, 8192)
    assert supervisor.max_body_bytes == 1024 * 1024 and supervisor.max_connections == 1024


def test_limits_out_of_range_or_unknown_are_errors(tmp_path: Path) -> None:
    text = (
        "name: a\n"
        "runtime: {limits: {max_header_bytes: 10, max_connections: 0, header_timeout_s: .inf}}\n"
        "supervisor: {limits: {max_body: 1}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    lines = info.value.errors
    assert any(line.startswith("runtime.limits.max_header_bytes: ") for line in lines)
    assert any(line.startswith("runtime.limits.max_connections: ") for line in lines)
    assert any(line.startswith("runtime.limits.header_timeout_s: ") for line in lines)
    assert "supervisor.limits.max_body: Unknown field." in lines
    assert len(lines) == 4


def test_request_timeout_must_cover_the_head_timeout(tmp_path: Path) -> None:
    text = "name: a\nsupervisor: {limits: {header_timeout_s: 30, request_timeout_s: 10}}\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.errors == [
        "supervisor.limits.request_timeout_s: must be at least header_timeout_s "
        "(the request includes its head)."
    ]


def test_a_symlinked_enclave_yaml_keeps_its_state_beside_the_link(tmp_path: Path) -> None:
    """As in examples/hello, whose enclave.yaml links to the package template."""
    shared = tmp_path / "templates"
    shared.mkdir()
    write(shared, "name: linked\napp: {dir: .}\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "enclave.yaml").symlink_to(shared / "enclave.yaml")
    config = load_config(project / "enclave.yaml")
    assert config.base_dir == project
    assert config.state_dir == project / ".enclave"
    assert config.app_dir == project
