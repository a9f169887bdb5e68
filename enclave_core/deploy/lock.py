"""``enclave.lock``: everything the enclave image installs, pinned by hash, made once and committed.

:func:`make_lock` (``enclave lock``, or the first ``enclave build``) resolves, for the enclave's
platform (CPython 3.11 of the base image, glibc 2.36 of Debian bookworm, x86_64 or aarch64 from
``instance_type``):

- the base image's digest (:mod:`enclave_core.deploy.registry`);
- every wheel the image installs: simple-enclave of this version (from ``artifacts/wheels/``
  first, for an unreleased build) and the app's ``requirements.txt``, with their SHA-256;
- ``SOURCE_DATE_EPOCH``: the app's last commit time (or now, outside git), the one timestamp
  every file of the build context gets.

``enclave build`` installs exactly that (:mod:`enclave_core.deploy.context`) and refuses a lock
that no longer matches ``requirements.txt``, the framework's version or the architecture.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from enclave_core import __version__
from enclave_core.config import Config
from enclave_core.deploy.external import failure, stream
from enclave_core.deploy.layout import BASE_IMAGE, LOCK_FILENAME, PACKAGE, local_wheels
from enclave_core.deploy.wheelhouse import host_arch, manylinux_tags
from enclave_core.errors import EnclaveError, ValidationError

LOCK_VERSION = 1
#: The base image's CPython and glibc (python:3.11-slim-bookworm: Debian 12).
IMAGE_PYTHON = "3.11"
IMAGE_GLIBC = (2, 36)
PIP_TIMEOUT_S = 900.0
_WHEEL = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.!+]+)-.+\.whl$")


@dataclass(frozen=True)
class LockedWheel:
    """One wheel the image installs."""

    name: str
    version: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class Lock:
    """The content of ``enclave.lock`` (JSON, keys sorted, one wheel per entry)."""

    framework: str
    base_image: str
    base_digest: str
    arch: str
    source_date_epoch: int
    requirements_sha256: str | None
    wheels: tuple[LockedWheel, ...] = field(default_factory=tuple)
    python: str = IMAGE_PYTHON
    glibc: str = f"{IMAGE_GLIBC[0]}.{IMAGE_GLIBC[1]}"
    version: int = LOCK_VERSION

    def __post_init__(self) -> None:
        # One order, whatever pip's: the same lock is the same value and the same bytes.
        ordered = tuple(sorted(self.wheels, key=lambda w: (w.name, w.filename)))
        object.__setattr__(self, "wheels", ordered)

    @property
    def base(self) -> str:
        """``name@sha256:…``, what the Dockerfile's FROM names."""
        return f"{self.base_image}@{self.base_digest}"

    def to_json(self) -> str:
        """The file's text: stable, so the same lock is the same bytes."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, where: str = LOCK_FILENAME) -> Lock:
        """Parse the file's text.

        :raises ValidationError: naming what is wrong.
        """
        try:
            doc: Any = json.loads(text)
            if not isinstance(doc, dict) or doc.get("version") != LOCK_VERSION:
                raise ValueError(f"not a version {LOCK_VERSION} lock")
            wheels = tuple(LockedWheel(**w) for w in doc.pop("wheels"))
            lock = cls(wheels=wheels, **doc)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValidationError(
                f"{where} cannot be read ({exc}): run enclave lock again"
            ) from None
        for wheel in lock.wheels:
            if not re.fullmatch(r"[0-9a-f]{64}", wheel.sha256) or "/" in wheel.filename:
                raise ValidationError(f"{where}: the entry of {wheel.filename!r} is malformed")
        return lock

    def requirements_text(self) -> str:
        """pip's hash-checking requirements: exactly these wheels, nothing else."""
        lines = [f"{w.name}=={w.version} --hash=sha256:{w.sha256}" for w in self.wheels]
        return "\n".join(lines) + "\n"


def lock_path(config: Config) -> Path:
    """``enclave.lock`` beside enclave.yaml."""
    return config.base_dir / LOCK_FILENAME


def wheel_cache(config: Config) -> Path:
    """Where the locked wheels are kept between builds (the state directory: not committed)."""
    return config.state_dir / "wheels"


def requirements_path(config: Config) -> Path | None:
    """The app's ``requirements.txt``, if it has one."""
    path = config.app_dir / "requirements.txt"
    return path if path.is_file() else None


def requirements_sha256(config: Config) -> str | None:
    """The SHA-256 of ``requirements.txt`` (line endings normalised), or None without one."""
    path = requirements_path(config)
    if path is None:
        return None
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def read_lock(config: Config) -> Lock | None:
    """``enclave.lock``, or None when there is none."""
    path = lock_path(config)
    try:
        return Lock.from_json(path.read_text(encoding="utf-8"), where=str(path))
    except FileNotFoundError:
        return None


def write_lock(config: Config, lock: Lock) -> Path:
    """Write ``enclave.lock``; return its path."""
    path = lock_path(config)
    path.write_text(lock.to_json(), encoding="utf-8")
    return path


def lock_problems(config: Config, lock: Lock) -> list[str]:
    """Why ``lock`` does not describe what this build would install (empty when it does)."""
    found = []
    if lock.framework != __version__:
        found.append(f"{LOCK_FILENAME} pins {PACKAGE} {lock.framework}, and this is {__version__}")
    if lock.requirements_sha256 != requirements_sha256(config):
        found.append(f"{LOCK_FILENAME} was made for another requirements.txt (its hash differs)")
    if lock.arch != host_arch(config):
        found.append(
            f"{LOCK_FILENAME} is for {lock.arch}, and instance_type {config.instance_type} is "
            f"{host_arch(config)}"
        )
    if lock.base_image != BASE_IMAGE:
        found.append(f"{LOCK_FILENAME} is for the base image {lock.base_image}, not {BASE_IMAGE}")
    return found


def source_date_epoch(config: Config, *, clock: Callable[[], float] = time.time) -> int:
    """The app's last commit time (``git log -1 --format=%ct``), else now, in whole seconds."""
    git = shutil.which("git")
    if git is not None:
        try:
            done = subprocess.run(
                [git, "-C", str(config.base_dir), "log", "-1", "--format=%ct"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if done.returncode == 0 and done.stdout.strip().isdigit():
                return int(done.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    return int(clock())


def pip_platform_args(arch: str) -> list[str]:
    """``pip download`` options for the image's platform: binary wheels only."""
    args = ["--only-binary=:all:"]
    for tag in manylinux_tags(arch, IMAGE_GLIBC):
        args += ["--platform", tag]
    return [
        *args,
        "--python-version",
        IMAGE_PYTHON,
        "--implementation",
        "cp",
        "--abi",
        f"cp{IMAGE_PYTHON.replace('.', '')}",
    ]


def _pip(dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--progress-bar", "off", "--dest", str(dest)]  # fmt: skip


def sha256_of(path: Path) -> str:
    """A file's SHA-256, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locked_wheel(path: Path) -> LockedWheel:
    """The lock entry of a wheel file."""
    match = _WHEEL.match(path.name)
    if match is None:
        raise EnclaveError(f"{path.name} is not a wheel file name")
    name = re.sub(r"[-_.]+", "-", match["name"]).lower()
    return LockedWheel(name, match["version"], path.name, sha256_of(path))


def make_lock(
    config: Config,
    *,
    base_digest: str,
    echo: Callable[[str], None],
    epoch: int | None = None,
) -> Lock:
    """Resolve every wheel for the image's platform (``pip download``) and pin it.

    The wheels are kept in :func:`wheel_cache` for the builds that follow.

    :param base_digest: the base image's ``sha256:…`` digest.
    :param epoch: ``SOURCE_DATE_EPOCH`` (default :func:`source_date_epoch`).
    :raises EnclaveError: pip failed (a dependency without a wheel for the platform, no network).
    """
    arch = host_arch(config)
    argv = [*_pip(Path()), *pip_platform_args(arch)]
    if local_wheels(config).is_dir():
        argv += ["--find-links", str(local_wheels(config))]
    argv.append(f"{PACKAGE}=={__version__}")
    requirements = requirements_path(config)
    if requirements is not None:
        argv += ["-r", str(requirements)]
    with tempfile.TemporaryDirectory(prefix="enclave-lock-") as tmp:
        argv[argv.index("--dest") + 1] = tmp
        result = stream(argv, timeout_s=PIP_TIMEOUT_S, echo=echo)
        if result.returncode != 0:
            raise failure(
                f"pip download of the image's wheels ({arch})",
                result,
                hint=f"every package needs a wheel for CPython {IMAGE_PYTHON} on manylinux {arch}",
            )
        cache = wheel_cache(config)
        cache.mkdir(parents=True, exist_ok=True)
        wheels = []
        for path in sorted(Path(tmp).glob("*.whl")):
            shutil.copy2(path, cache / path.name)
            wheels.append(locked_wheel(path))
    return Lock(
        framework=__version__,
        base_image=BASE_IMAGE,
        base_digest=base_digest,
        arch=arch,
        source_date_epoch=source_date_epoch(config) if epoch is None else epoch,
        requirements_sha256=requirements_sha256(config),
        wheels=tuple(wheels),
    )


def fetch_wheels(config: Config, lock: Lock, *, echo: Callable[[str], None]) -> list[Path]:
    """The locked wheels, from the cache, or downloaded with their hashes checked.

    :raises EnclaveError: pip cannot get them, or a file does not have its locked hash.
    """
    cache = wheel_cache(config)
    cache.mkdir(parents=True, exist_ok=True)
    missing = [w for w in lock.wheels if not _cached(cache, w)]
    if missing:
        partial = replace(lock, wheels=tuple(missing))
        with tempfile.TemporaryDirectory(prefix="enclave-wheels-") as tmp:
            wanted = Path(tmp) / "requirements.txt"
            wanted.write_text(partial.requirements_text(), encoding="utf-8")
            argv = [*_pip(Path(tmp) / "got"), *pip_platform_args(lock.arch), "--no-deps"]
            argv += ["--require-hashes", "-r", str(wanted)]
            if local_wheels(config).is_dir():
                argv += ["--find-links", str(local_wheels(config))]
            result = stream(argv, timeout_s=PIP_TIMEOUT_S, echo=echo)
            if result.returncode != 0:
                raise failure("pip download of the locked wheels", result)
            for path in (Path(tmp) / "got").glob("*.whl"):
                shutil.copy2(path, cache / path.name)
        for wheel in missing:  # only what was just fetched needs hashing again
            if not _cached(cache, wheel):
                raise EnclaveError(
                    f"{wheel.filename} does not have the SHA-256 {LOCK_FILENAME} pins: refusing it"
                )
    return [cache / w.filename for w in sorted(lock.wheels, key=lambda w: w.filename)]


def _cached(cache: Path, wheel: LockedWheel) -> bool:
    """Whether the cache holds ``wheel`` with its locked hash."""
    path = cache / wheel.filename
    return path.is_file() and sha256_of(path) == wheel.sha256
