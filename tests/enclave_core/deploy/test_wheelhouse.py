"""The hosts' wheelhouse: pip download for the instance's platform, local wheels first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from enclave_core import __version__
from enclave_core.deploy.external import ToolFailed
from enclave_core.deploy.wheelhouse import (
    HOST_GLIBC,
    manylinux_tags,
    pip_argv,
    platform_tag,
    resolve,
)
from enclave_core.testing import dev_config_document, write_config
from tests.helpers import build_project_wheel


def test_pip_downloads_binary_wheels_for_the_hosts_platform(tmp_path: Path) -> None:
    config = write_config(tmp_path / "app", dev_config_document(instance_type="m7g.xlarge"))
    assert platform_tag(config) == "manylinux_2_34_aarch64"
    argv = pip_argv(config, tmp_path / "wh", python="python3")
    platforms = [f"manylinux_2_{minor}_aarch64" for minor in range(34, 16, -1)]
    platforms.append("manylinux2014_aarch64")
    assert argv == [
        "python3", "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar",
        "off", "--dest", str(tmp_path / "wh"), "--only-binary=:all:",
        *(arg for tag in platforms for arg in ("--platform", tag)),
        "--python-version", "3.11", "--implementation", "cp", "--abi",
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


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_the_tags_are_the_ones_packaging_gives_a_host_with_that_glibc(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # packaging enumerates the running host's tags; pretend it has the hosts' glibc.
    from packaging import _manylinux

    monkeypatch.setattr(_manylinux, "_get_glibc_version", lambda: HOST_GLIBC)
    monkeypatch.setattr(_manylinux, "_is_compatible", lambda arch, version: True)
    assert manylinux_tags(arch) == list(_manylinux.platform_tags([arch]))
    tags = manylinux_tags(arch)
    # httptools publishes manylinux_2_28 / manylinux_2_5 wheels: both must be asked for.
    assert f"manylinux_2_28_{arch}" in tags and f"manylinux2014_{arch}" in tags
    assert (f"manylinux1_{arch}" in tags) == (arch == "x86_64")
    assert tags[0] == f"manylinux_2_34_{arch}"


def test_only_glibc_2_has_manylinux_tags() -> None:
    with pytest.raises(ValueError, match="glibc 3.0"):
        manylinux_tags("x86_64", (3, 0))


@pytest.mark.parametrize("instance_type", ["c6i.2xlarge", "m7g.xlarge"])
def test_the_real_dependency_set_resolves_for_both_architectures(
    instance_type: str, tmp_path: Path
) -> None:
    """pip download from the package index, as step 1 of enclave deploy runs it: every
    dependency of this version has a wheel for the hosts (x86_64 and aarch64)."""
    app = tmp_path / "app"
    config = write_config(app, dev_config_document(instance_type=instance_type))
    wheels = app / "artifacts" / "wheels"  # the unreleased framework, as enclave build --wheel
    build_project_wheel(wheels)
    lines: list[str] = []
    found = resolve(config, tmp_path / "wh", echo=lines.append)
    names = {path.name.split("-")[0].lower().replace("_", "-") for path in found}
    assert {"simple-enclave", "httptools", "uvloop", "cryptography", "cffi"} <= names, names
    arch = "aarch64" if instance_type.startswith("m7g") else "x86_64"
    native = [p.name for p in found if not p.name.endswith("-none-any.whl")]
    assert native and all(arch in name for name in native), native
