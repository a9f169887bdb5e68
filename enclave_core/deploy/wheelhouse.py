"""The hosts' wheelhouse: simple-enclave and its dependencies as wheels for the instance's platform.

The hosts have no route to PyPI, so :func:`resolve` runs ``pip download`` here for Amazon Linux
2023 on the instance's architecture, binary wheels only, searching ``artifacts/wheels/`` first
(``enclave build --wheel`` puts an unreleased wheel there); ``enclave deploy`` uploads them to the
EIF bucket for the hosts' first boot.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from enclave_core import __version__
from enclave_core.config import Config
from enclave_core.deploy.build import local_wheels
from enclave_core.deploy.external import failure, stream
from enclave_core.deploy.instance_types import lookup
from enclave_core.errors import ConfigError

PACKAGE = "simple-enclave"
HOST_PYTHON = "3.11"
#: Amazon Linux 2023's glibc; pip also accepts every older manylinux tag under it.
HOST_GLIBC = "2_34"
PIP_TIMEOUT_S = 900.0
_PIP_ARCH = {"x86_64": "x86_64", "arm64": "aarch64"}


def platform_tag(config: Config) -> str:
    """The pip platform of ``instance_type``'s hosts, e.g. ``manylinux_2_34_x86_64``."""
    instance = lookup(config.instance_type)
    if instance is None:
        raise ConfigError(f"instance_type {config.instance_type} is not a known enclave host")
    return f"manylinux_{HOST_GLIBC}_{_PIP_ARCH[instance.architecture]}"


def pip_argv(config: Config, dest: Path, *, python: str = sys.executable) -> list[str]:
    """``pip download`` of ``simple-enclave==<this version>`` and its dependencies into ``dest``."""
    argv = [
        python,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        "--platform",
        platform_tag(config),
        "--python-version",
        HOST_PYTHON,
        "--implementation",
        "cp",
        "--abi",
        f"cp{HOST_PYTHON.replace('.', '')}",
    ]
    if local_wheels(config).is_dir():
        argv += ["--find-links", str(local_wheels(config))]
    return [*argv, f"{PACKAGE}=={__version__}"]


def resolve(
    config: Config,
    dest: Path,
    *,
    echo: Callable[[str], None],
    argv: Callable[[Config, Path], list[str]] = pip_argv,
) -> list[Path]:
    """Fill ``dest`` (emptied first) with the hosts' wheels; return them, sorted by name.

    :param argv: builds the pip command (tests give another one).
    :raises EnclaveError: pip failed (its last lines attached: typically a dependency without a
        wheel for the platform, or no network).
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    result = stream(argv(config, dest), timeout_s=PIP_TIMEOUT_S, echo=echo)
    if result.returncode != 0:
        raise failure(
            "pip download of the hosts' wheels",
            result,
            hint=f"a package without a {platform_tag(config)} wheel can be built into "
            f"{local_wheels(config)} with pip wheel",
        )
    return sorted(dest.glob("*.whl"))
