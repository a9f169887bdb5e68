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
from enclave_core.deploy.external import failure, stream
from enclave_core.deploy.instance_types import lookup
from enclave_core.deploy.layout import local_wheels
from enclave_core.errors import ConfigError

PACKAGE = "simple-enclave"
HOST_PYTHON = "3.11"
#: Amazon Linux 2023's glibc: the newest manylinux tag its hosts install.
HOST_GLIBC = (2, 34)
PIP_TIMEOUT_S = 900.0
_PIP_ARCH = {"x86_64": "x86_64", "arm64": "aarch64"}
#: The oldest glibc of any manylinux tag, by architecture (PEP 600: manylinux1 was 2.5 on x86;
#: manylinux2014, glibc 2.17, was the first for aarch64).
_OLDEST_GLIBC_MINOR = {"x86_64": 5, "i686": 5}
_DEFAULT_OLDEST_GLIBC_MINOR = 17
#: The PEP 513/571/599 names of three glibc versions, still used by many wheels.
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def manylinux_tags(arch: str, glibc: tuple[int, int] = HOST_GLIBC) -> list[str]:
    """Every manylinux platform tag a host with ``glibc`` on ``arch`` installs, newest first.

    pip's ``--platform`` matches only the tags it is given (it does not widen
    ``manylinux_2_34`` to older ones), and a dependency may publish only ``manylinux_2_28`` or
    ``manylinux2014`` wheels: ``pip download`` gets all of them. The same list as the
    ``packaging`` library gives on such a host (PEP 600, with the legacy aliases).
    """
    major, newest = glibc
    if major != 2:
        raise ValueError(f"glibc {major}.{newest}: manylinux tags exist for glibc 2 only")
    oldest = _OLDEST_GLIBC_MINOR.get(arch, _DEFAULT_OLDEST_GLIBC_MINOR)
    tags: list[str] = []
    for minor in range(newest, oldest - 1, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in _LEGACY_MANYLINUX:
            tags.append(f"{_LEGACY_MANYLINUX[minor]}_{arch}")
    return tags


def host_arch(config: Config) -> str:
    """The hosts' architecture as wheels name it: ``x86_64`` or ``aarch64``."""
    instance = lookup(config.instance_type)
    if instance is None:
        raise ConfigError(f"instance_type {config.instance_type} is not a known enclave host")
    return _PIP_ARCH[instance.architecture]


def platform_tag(config: Config) -> str:
    """The newest pip platform of ``instance_type``'s hosts, e.g. ``manylinux_2_34_x86_64``."""
    return manylinux_tags(host_arch(config))[0]


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
        *(arg for tag in manylinux_tags(host_arch(config)) for arg in ("--platform", tag)),
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
            hint=f"a package without a manylinux wheel for {host_arch(config)} (glibc "
            f"{HOST_GLIBC[0]}.{HOST_GLIBC[1]} or older) can be built into "
            f"{local_wheels(config)} with pip wheel",
        )
    return sorted(dest.glob("*.whl"))
