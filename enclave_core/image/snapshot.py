"""Development images: immutable, content-addressed snapshots of ``app.dir``, like an EIF.

:func:`take_snapshot` copies a folder's image files (:mod:`enclave_core.image.files`) to
``.enclave/images/<digest>/``, read-only; the runtime runs the one ``.enclave/image.json`` names,
so editing the sources changes nothing until a migration makes a new one. :func:`prune` keeps the
running snapshot and its predecessor.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from enclave_core.config import Config
from enclave_core.errors import EnclaveError, ValidationError
from enclave_core.image.files import image_files, measure
from enclave_core.image.outputs import build_outputs

IMAGES_DIRNAME = "images"
#: Characters of the content digest that name a snapshot's folder.
ID_CHARS = 32


@dataclass(frozen=True)
class Snapshot:
    """One development image: its folder, the digest of its files, the folder it was taken of."""

    path: Path
    digest: str
    source: Path


def images_dir(config: Config) -> Path:
    """Where the snapshots live (``state_dir/images``)."""
    return config.state_dir / IMAGES_DIRNAME


def _files(config: Config, folder: Path) -> list[tuple[str, Path]]:
    return image_files(folder, exclude=config.app.exclude, private=build_outputs(config))


def content_digest(config: Config, folder: Path) -> str:
    """The digest (hex) of the image ``folder`` would make now."""
    return measure(_files(config, folder)).hex()


def _copy(files: list[tuple[str, Path]], destination: Path) -> None:
    for relative, path in files:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        executable = os.stat(path).st_mode & stat.S_IXUSR
        os.chmod(target, 0o555 if executable else 0o444)  # an image does not change


def take_snapshot(config: Config, folder: Path) -> Snapshot:
    """The snapshot of ``folder``'s image files, made now unless one with that content exists.

    :raises ValidationError: ``folder`` is not a directory.
    :raises EnclaveError: the copy failed.
    """
    source = Path(folder).resolve()
    if not source.is_dir():
        raise ValidationError(f"new app folder {source} is not a directory")
    files = _files(config, source)
    digest = measure(files).hex()
    root = images_dir(config)
    destination = root / digest[:ID_CHARS]
    if destination.is_dir() and content_digest(config, destination) == digest:
        return Snapshot(destination, digest, source)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{digest[:ID_CHARS]}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        staging.mkdir()
        _copy(files, staging)
        if destination.exists():  # a damaged copy: replace it
            _remove(destination)
        os.rename(staging, destination)
    except OSError as exc:
        _remove(staging)
        raise EnclaveError(f"cannot snapshot {source} into {root}: {exc.strerror or exc}") from None
    logger.bind(source=str(source), image=destination.name, files=len(files)).info(
        "development image snapshot taken"
    )
    return Snapshot(destination, digest, source)


def _remove(path: Path) -> None:
    def writable_then_retry(function: Any, target: str, _exc: Any) -> None:
        os.chmod(Path(target).parent, 0o700)  # read-only files in read-only folders
        os.chmod(target, 0o700)
        function(target)

    if path.exists():
        shutil.rmtree(path, onerror=writable_then_retry)


def prune(config: Config, keep: set[Path]) -> list[str]:
    """Delete every snapshot but those in ``keep``; return the names deleted."""
    root = images_dir(config)
    if not root.is_dir():
        return []
    kept = {Path(p).resolve() for p in keep}
    removed = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and entry.resolve() not in kept:
            _remove(entry)
            removed.append(entry.name)
    if removed:
        logger.bind(removed=removed).info("old development images pruned")
    return removed


def read_digest(record: dict[str, str]) -> str | None:
    """The content digest an image record names, or None (a record older than snapshots)."""
    value = record.get("digest")
    return value if isinstance(value, str) else None
