"""The hosts' wheelhouse: pip download for the instance's platform, local wheels first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from enclave_core import __version__
from enclave_core.deploy.external import ToolFailed
from enclave_core.deploy.wheelhouse import pip_argv, platform_tag, resolve
from enclave_core.testing import dev_config_document, write_config


def test_pip_downloads_binary_wheels_for_the_hosts_platform(tmp_path: Path) -> None:
    config = write_config(tmp_path / "app", dev_config_document(instance_type="m7g.xlarge"))
    assert platform_tag(config) == "manylinux_2_34_aarch64"
    argv = pip_argv(config, tmp_path / "wh", python="python3")
    assert argv == [
        "python3", "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar",
        "off", "--dest", str(tmp_path / "wh"), "--only-binary=:all:", "--platform",
        "manylinux_2_34_aarch64", "--python-version", "3.11", "--implementation", "cp", "--abi",
        "cp311", f"simple-enclave=={__version__}",
    ]  # fmt: skip
    (tmp_path / "app" / "artifacts" / "wheels").mkdir(parents=True)
    argv = pip_argv(config, tmp_path / "wh", python="python3")
    assert argv[-3:] == [
        "--find-links",
        str(tmp_path / "app" / "artifacts" / "wheels"),
        f"simple-enclave=={__version__}",
    ]
    x86 = write_config(tmp_path / "x86", dev_config_document(instance_type="c6i.2xlarge"))
    assert platform_tag(x86) == "manylinux_2_34_x86_64"


def test_resolve_empties_the_folder_and_reports_pips_failure(tmp_path: Path) -> None:
    config = write_config(tmp_path / "app", dev_config_document())
    dest = tmp_path / "wh"
    dest.mkdir()
    (dest / "stale-1.0-py3-none-any.whl").write_bytes(b"old")
    failing = [sys.executable, "-c", "import sys; print('ERROR: No matching distribution'); "
               "sys.exit(1)"]  # fmt: skip
    with pytest.raises(ToolFailed) as caught:
        resolve(config, dest, echo=lambda _: None, argv=lambda config, dest: failing)
    assert str(caught.value).startswith("pip download of the hosts' wheels failed with exit")
    assert caught.value.details == ["ERROR: No matching distribution"]
    assert list(dest.iterdir()) == []
