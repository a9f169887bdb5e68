"""Which of the app's files make its image, and the digest of that set.

One rule for the development snapshot the simulated NSM measures and for ``enclave build``'s
context: :func:`image_files` leaves out :data:`DEFAULT_EXCLUDE`, ``app.exclude``, whatever is not
a regular file and the private paths passed in; :func:`measure` is the SHA-384 digest that the
simulated NSM reports as PCR0. The rule and the encoding: docs/architecture.md, "Images".
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["DEFAULT_EXCLUDE", "ImageFile", "excluded", "image_files", "measure"]

#: Never part of an image: version control, caches, virtualenvs, bytecode, logs, the state
#: directory's name and build output.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".git",
    ".hg",
    ".svn",
    ".enclave",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    ".tox",
    ".venv",
    "venv",
    "*.pyc",
    "*.pyo",
    "*.log",
    ".DS_Store",
)

ImageFile = tuple[str, Path]  # (relative POSIX path, the file on disk)


def excluded(relative: str, patterns: Sequence[str]) -> bool:
    """Whether the file or folder at ``relative`` (POSIX, relative to app.dir) is left out."""
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatchcase(relative, pattern.strip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def image_files(
    app_dir: Path, *, exclude: Sequence[str] = (), private: Iterable[Path] = ()
) -> list[ImageFile]:
    """The files of the image made from ``app_dir``, sorted by relative path.

    :param exclude: patterns left out on top of :data:`DEFAULT_EXCLUDE` (``app.exclude``).
    :param private: paths never included wherever they are (the state directory...).
    """
    root = Path(app_dir).resolve()
    patterns = (*DEFAULT_EXCLUDE, *exclude)
    skip = {Path(p).resolve() for p in private}
    files: list[ImageFile] = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        prefix = here.relative_to(root).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        dirs[:] = sorted(
            d
            for d in dirs
            if not excluded(prefix + d, patterns)
            and (here / d).resolve() not in skip
            and not (here / d).is_symlink()
        )
        for name in sorted(names):
            path = here / name
            if excluded(prefix + name, patterns) or not path.is_file():
                continue
            if path.resolve() in skip:
                continue
            files.append((prefix + name, path))
    return sorted(files, key=lambda item: item[0].encode())


def measure(files: Iterable[ImageFile]) -> bytes:
    """The SHA-384 digest of a set of image files (see the module docstring)."""
    digest = hashlib.sha384()
    for relative, path in sorted(files, key=lambda item: item[0].encode()):
        name = relative.encode()
        content = path.read_bytes()
        digest.update(struct.pack(">Q", len(name)) + name)
        digest.update(struct.pack(">Q", len(content)) + content)
    return digest.digest()
