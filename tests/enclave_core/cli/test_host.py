"""`enclave host install`: the systemd unit, the env file, the allocator config, the state dir."""

from __future__ import annotations

import configparser
import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from enclave_core.cli.host import (
    ALLOCATOR_PATH,
    ENV_PATH,
    UNIT_PATH,
    enclave_command,
    systemd_quote,
    unit_text,
)
from enclave_core.config import Config
from tests.helpers import cli

#: The keys (section, key) -> value the brief and the operations guide rely on.
REQUIRED = {
    ("Unit", "After"): "network-online.target nitro-enclaves-allocator.service",
    ("Unit", "Wants"): "network-online.target",
    ("Unit", "Requires"): "nitro-enclaves-allocator.service",
    ("Unit", "StartLimitIntervalSec"): "0",
    ("Service", "Type"): "simple",
    ("Service", "Restart"): "always",
    ("Service", "RestartSec"): "2",
    ("Service", "EnvironmentFile"): "-/etc/simple-enclave/supervisor.env",
    ("Service", "StandardOutput"): "journal",
    ("Service", "StandardError"): "journal",
    ("Service", "SyslogIdentifier"): "enclave-supervisor",
    ("Service", "NoNewPrivileges"): "yes",
    ("Service", "ProtectSystem"): "strict",
    ("Service", "PrivateTmp"): "yes",
    ("Service", "ProtectKernelTunables"): "yes",
    ("Service", "ProtectKernelModules"): "yes",
    ("Service", "ProtectControlGroups"): "yes",
    ("Service", "RestrictSUIDSGID"): "yes",
    ("Service", "LockPersonality"): "yes",
    ("Service", "RestrictRealtime"): "yes",
    ("Service", "SystemCallArchitectures"): "native",
    ("Service", "UMask"): "0077",
    ("Service", "KillMode"): "mixed",
    ("Service", "TimeoutStopSec"): "20",
    ("Install", "WantedBy"): "multi-user.target",
}


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(text)
    return parser


@pytest.fixture
def host_config(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    # A space and a % in the folder: both need escaping in a unit file.
    return make_config(
        tmp_path / "my app %i",
        mode="development",
        region="eu-west-1",
        enclave={"cpu_count": 4, "memory_mib": 6144, "eif": "build/image.eif"},
        launcher={"backend": "nitro-cli"},
    )


def test_dry_run_prints_every_file_and_writes_nothing(
    host_config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert host_config.path is not None
    code, out, err = cli(capsys, "host", "install", "--dry-run", "-c", str(host_config.path))
    assert code == 0, err
    for path, mode in ((UNIT_PATH, "0644"), (ENV_PATH, "0600"), (ALLOCATOR_PATH, "0644")):
        assert f"# ==> {path} (mode {mode}) <==" in out
    assert f"# ==> {host_config.state_dir}/ (directory, mode 0700) <==" in out
    assert "Type=simple\n" in out and "Type=oneshot" not in out
    assert "memory_mib: 6144\n" in out and "cpu_count: 4\n" in out
    assert "AWS_REGION=eu-west-1\n" in out and "AWS_DEFAULT_REGION=eu-west-1\n" in out
    for command in (
        "systemctl daemon-reload",
        "systemctl enable --now nitro-enclaves-allocator enclave-supervisor",
        "journalctl -u enclave-supervisor -f",
    ):
        assert f"  {command}\n" in out
    assert "nothing was written" in out
    assert not host_config.state_dir.exists()
    assert "warning: mode is 'development'" in err


def test_prefix_dir_writes_the_files_with_their_modes(
    host_config: Config, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert host_config.path is not None
    root = tmp_path / "root"
    args = ("host", "install", "-c", str(host_config.path), "--prefix-dir", str(root))
    code, out, err = cli(capsys, *args)
    assert code == 0, err

    unit = root / "etc/systemd/system/enclave-supervisor.service"
    env = root / "etc/simple-enclave/supervisor.env"
    allocator = root / "etc/nitro_enclaves/allocator.yaml"
    state = root / str(host_config.state_dir).lstrip("/")
    assert unit.stat().st_mode & 0o777 == 0o644
    assert env.stat().st_mode & 0o777 == 0o600
    assert allocator.stat().st_mode & 0o777 == 0o644
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700
    assert f"wrote   {unit} (mode 0644)" in out and "systemctl daemon-reload" in out

    assert yaml.safe_load(allocator.read_text()) == {"memory_mib": 6144, "cpu_count": 4}
    assert "AWS_REGION=eu-west-1\n" in env.read_text()
    assert unit.read_text() == unit_text(host_config, enclave_command())

    # A second run regenerates the unit and the allocator config but keeps the edited env file.
    env.write_text("AWS_REGION=eu-west-1\nEXTRA=kept\n")
    unit.write_text("stale")
    code, out, _ = cli(capsys, *args)
    assert code == 0
    assert env.read_text() == "AWS_REGION=eu-west-1\nEXTRA=kept\n"
    assert f"kept    {env}" in out
    assert unit.read_text() == unit_text(host_config, enclave_command())


def test_the_unit_has_the_required_keys_and_passes_systemd_analyze(
    host_config: Config, tmp_path: Path
) -> None:
    command = enclave_command()
    text = unit_text(host_config, command)
    unit = parse_unit(text)
    for (section, key), value in REQUIRED.items():
        assert unit.get(section, key) == value, (section, key)
    assert "PrivateDevices" not in unit["Service"]  # nitro-cli needs /dev/nitro_enclaves
    assert "Type=oneshot" not in text

    service = unit["Service"]
    folder = str(host_config.base_dir).replace("%", "%%")
    assert service["ExecStart"] == (f'{command[0]} supervisor -c "{folder}/enclave.yaml"')
    assert Path(command[0]).is_absolute() and os.access(command[0], os.X_OK)
    assert service["ReadWritePaths"] == (
        f'"{folder}/.enclave" "-{folder}/build" -/var/log/nitro_enclaves -/run/nitro_enclaves'
    )

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the configparser checks above stand in for it on this machine
    folder_path = tmp_path / "units"
    folder_path.mkdir()
    (folder_path / "enclave-supervisor.service").write_text(text)
    # On a host the aws-nitro-enclaves-cli package installs this unit; verify needs it to exist.
    (folder_path / "nitro-enclaves-allocator.service").write_text(
        "[Unit]\nDescription=allocator stand-in\n[Service]\nType=oneshot\nExecStart=/bin/true\n"
    )
    done = subprocess.run(
        [analyze, "verify", str(folder_path / "enclave-supervisor.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # verify only warns about unknown keys or bad values: there must be no output at all.
    assert done.stderr.strip() == "" and done.stdout.strip() == ""


def test_protect_home_is_read_only_only_when_something_lives_in_a_home(
    host_config: Config,
) -> None:
    software = [Path("/opt/enclave/bin/enclave"), Path("/opt/enclave")]
    outside = parse_unit(unit_text(host_config, ["/opt/enclave/bin/enclave"], software=software))
    assert outside.get("Service", "ProtectHome") == "yes"

    home = Path("/home/ec2-user/app")
    moved = dataclasses.replace(host_config, path=home / "enclave.yaml", base_dir=home)
    text = unit_text(moved, ["/opt/enclave/bin/enclave"], software=software)
    inside = parse_unit(text)
    assert inside.get("Service", "ProtectHome") == "read-only"
    # The state directory stays writable inside the read-only home.
    assert inside.get("Service", "ReadWritePaths").split()[0] == "/home/ec2-user/app/.enclave"
    assert "/home/ec2-user/app/enclave.yaml" in text  # named in the comment explaining why


def test_refuses_to_write_to_the_system_as_a_normal_user(
    host_config: Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert host_config.path is not None
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out, err = cli(capsys, "host", "install", "-c", str(host_config.path))
    assert code == 1
    assert err.splitlines()[-1].startswith("ERROR: enclave host install writes to /etc")
    assert "--dry-run" in err and "wrote" not in out
    assert not host_config.state_dir.exists()
    code, _, _ = cli(capsys, "host", "install", "--dry-run", "-c", str(host_config.path))
    assert code == 0


def test_systemd_quote() -> None:
    assert systemd_quote("/usr/bin/enclave") == "/usr/bin/enclave"
    assert systemd_quote("/srv/my app/enclave.yaml") == '"/srv/my app/enclave.yaml"'
    assert systemd_quote("/srv/100%/$HOME") == "/srv/100%%/$$HOME"
