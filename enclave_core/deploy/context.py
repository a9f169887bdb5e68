"""The build context of ``enclave build``: the same bytes from the same source, anywhere, any day.

:func:`write_context` fills a folder with the Dockerfile, ``enclave.lock`` and its hash-pinned
``requirements.lock.txt``, the locked wheels, the app's files (the rule of
:func:`enclave_core.image.files.image_files`) and enclave.yaml. Every file gets the lock's
``SOURCE_DATE_EPOCH`` as its time and a mode of 0644 (0755 when its owner may execute it), every
folder 0755, whatever the checkout's times and umask were. :func:`context_digest` is the SHA-256
of that folder as a canonical tar (sorted paths, those times and modes, owner 0:0, no names):
two checkouts of the same commit give the same digest, and any changed byte changes it.

The Dockerfile pins the base image by digest, installs only the locked wheels (``pip install
--no-index --require-hashes --no-compile``: no network, no bytecode written at build time) and
copies the app as root-owned files. ``docker build`` gets ``SOURCE_DATE_EPOCH`` as a build
argument, which BuildKit uses for the image's own timestamps.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from enclave_core.config import Config
from enclave_core.deploy.layout import IMAGE_ROOT, PACKAGE
from enclave_core.deploy.lock import LOCK_FILENAME, Lock
from enclave_core.errors import ConfigError

WHEELS_DIR = "wheels"
REQUIREMENTS = "requirements.lock.txt"
#: Where the wheels wait in the image while pip installs them (removed in the same layer).
IMAGE_WHEELS = PurePosixPath("/tmp/enclave-wheels")  # noqa: S108 - a build-time folder


@dataclass(frozen=True)
class Context:
    """A written build context."""

    folder: Path
    #: ``sha256:…`` of the canonical tar of the folder.
    digest: str
    #: Every file, relative to the folder, sorted.
    files: tuple[str, ...]


def app_location(config: Config) -> PurePosixPath:
    """Where the app's files go in the image: ``/app`` plus app.dir relative to enclave.yaml.

    :raises ConfigError: app.dir is outside the folder of enclave.yaml.
    """
    try:
        relative = config.app_dir.resolve().relative_to(config.base_dir.resolve())
    except ValueError:
        raise ConfigError(
            f"app.dir {config.app.dir} is outside {config.base_dir}: enclave build puts the app "
            "at the same place relative to enclave.yaml in the image; move it inside"
        ) from None
    return IMAGE_ROOT.joinpath(*relative.parts)


def dockerfile_text(config: Config, lock: Lock) -> str:
    """The Dockerfile of ``config``'s app, installing exactly ``lock``."""
    target = app_location(config)
    command = json.dumps(config.app.command)
    wheels = IMAGE_WHEELS
    lines = [
        f"# Written by `enclave build` ({PACKAGE} {lock.framework}) for app {config.name!r}, from",
        f"# {LOCK_FILENAME}: change enclave.yaml or run enclave lock, not this file.",
        f"FROM {lock.base}",
        "",
        f"ARG SOURCE_DATE_EPOCH={lock.source_date_epoch}",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \\",
        "    PIP_DISABLE_PIP_VERSION_CHECK=1",
        "",
        "# The framework and the app's dependencies: the locked wheels only, by hash, offline.",
        f"COPY --chown=0:0 {REQUIREMENTS} {WHEELS_DIR}/ {wheels}/",
        f"RUN pip install --no-index --require-hashes --no-compile --find-links {wheels} \\",
        f"    -r {wheels / REQUIREMENTS} && rm -rf {wheels}",
        "",
        f"WORKDIR {IMAGE_ROOT}",
        "# The app's files (app.dir) and enclave.yaml (mode: production backends).",
        f"COPY --chown=0:0 app/ {target}/",
        f"COPY --chown=0:0 enclave.yaml {IMAGE_ROOT / 'enclave.yaml'}",
        "",
        "# The runtime boots (attestation, KMS key, secrets, storage), then runs the app's",
        f"# command from enclave.yaml as its child, in {target}: {command}",
        f'ENTRYPOINT ["enclave", "runtime", "-c", "{IMAGE_ROOT / "enclave.yaml"}"]',
    ]
    return "\n".join(lines) + "\n"


def write_context(
    config: Config,
    lock: Lock,
    folder: Path,
    *,
    wheels: list[Path],
    app_files: list[tuple[str, Path]],
) -> Context:
    """Fill ``folder`` (emptied first) with the build context and normalise it; see the module
    docstring."""
    assert config.path is not None, "enclave build needs an enclave.yaml"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text(dockerfile_text(config, lock), encoding="utf-8")
    (folder / LOCK_FILENAME).write_text(lock.to_json(), encoding="utf-8")
    (folder / REQUIREMENTS).write_text(lock.requirements_text(), encoding="utf-8")
    shutil.copyfile(config.path, folder / "enclave.yaml")
    (folder / WHEELS_DIR).mkdir()
    for wheel in wheels:
        shutil.copyfile(wheel, folder / WHEELS_DIR / wheel.name)
    for relative, path in app_files:
        target = folder / "app" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if path.stat().st_mode & stat.S_IXUSR:
            target.chmod(0o755)
    (folder / "app").mkdir(exist_ok=True)
    normalise(folder, lock.source_date_epoch)
    files = tuple(sorted(p.relative_to(folder).as_posix() for p in _walk(folder) if p.is_file()))
    return Context(folder, context_digest(folder), files)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(dirs + names):
            yield Path(root) / name


def normalise(folder: Path, epoch: int) -> None:
    """Modes 0644/0755 and times ``epoch`` on everything under ``folder`` (and itself)."""
    for path in [*_walk(folder), folder]:
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644)
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def canonical_tar(folder: Path) -> bytes:
    """``folder`` as a tar whose bytes depend on the names, contents and modes only."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(_walk(folder), key=lambda p: p.relative_to(folder).as_posix()):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.mtime = int(path.stat().st_mtime)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            info.mode = 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
            data = path.read_bytes()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def context_digest(folder: Path) -> str:
    """``sha256:…`` of :func:`canonical_tar`."""
    return "sha256:" + hashlib.sha256(canonical_tar(folder)).hexdigest()
