"""``local`` storage: objects as files under a directory.

Options (``storage.options``): ``path``, the directory, relative to enclave.yaml's folder
(default ``.enclave/storage``). A key ``a/b/c`` is the percent-encoded file ``a%2F/b%2F/c`` (a
segment too long for one file name continues in ``%+`` folders; a key whose whole path passes
the system's limit, 4,096 bytes on Linux, is refused);
writes are atomic and hold a ``flock``, so conditional writes are race-free between processes;
the ETag is the quoted first 32 hex characters of the SHA-256 of the stored bytes. The layout in
full: docs/architecture.md, "Storage and secrets backends".
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from loguru import logger
from marshmallow import Schema, fields

from enclave_core import hookimpl
from enclave_core.errors import BackendError, NotFound, PreconditionFailed, ValidationError
from enclave_core.plugin.interfaces import BackendContext, StoredObject
from enclave_core.plugin.registry import BackendRegistry

DIR_SUFFIX = "%2F"
#: Ends a folder holding one piece of a segment too long for one file name; the segment goes on
#: in the next path part. ``quote`` never writes ``%+``, so no segment's own name ends so.
CONTINUED = "%+"
NAME_MAX = 255  # bytes in a file name (ext4, xfs, tmpfs...)
PIECE = 240  # the pieces a longer segment is cut into
RESERVED = "#"
LOCK_NAME = "#lock"


def etag_of(data: bytes) -> str:
    """Return the ETag of ``data``: ``"<first 32 hex chars of SHA-256>"``."""
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _normalise_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


class LocalStorage:
    """Object storage in a local directory (see the module docstring for the layout)."""

    name: ClassVar[str] = "local"

    class Options(Schema):
        """``storage.options`` of the local backend."""

        path = fields.String(load_default=".enclave/storage")

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> LocalStorage:
        """Build the backend on ``options["path"]`` resolved against enclave.yaml's folder."""
        return cls(context.resolve(options["path"]))

    # ------------------------------------------------------------------ paths and locking

    def _path(self, key: str) -> Path:
        """Map ``key`` to its file; refuse anything that could leave the directory."""
        if not isinstance(key, str) or not key or key.startswith("/") or "\x00" in key:
            raise ValidationError(f"local storage: invalid key {key!r}")
        segments = key.split("/")
        if any(seg in ("", ".", "..") for seg in segments):
            raise ValidationError(f"local storage: invalid key {key!r}")
        parts = [
            piece for seg in segments[:-1] for piece in _pieces(quote(seg, safe=""), DIR_SUFFIX)
        ]
        parts += _pieces(quote(segments[-1], safe=""), "")
        path = self.root.joinpath(*parts)
        root = os.path.abspath(self.root)
        if os.path.commonpath([root, os.path.abspath(path)]) != root:
            raise ValidationError(f"local storage: key {key!r} escapes the storage directory")
        return path

    def _ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)  # mkdir's mode is masked by the umask and skips existing folders

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_root()
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    # ------------------------------------------------------------------ Storage

    def get(self, key: str) -> StoredObject:
        """Return the object at ``key``; NotFound when it is missing."""
        path = self._path(key)
        try:
            data = self._read(path)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # could never have been stored
                raise NotFound(f"local storage: object {key!r} not found") from None
            raise BackendError(f"local storage: cannot read {key!r}: {exc.strerror}") from None
        if data is None:
            raise NotFound(f"local storage: object {key!r} not found")
        return StoredObject(data=data, etag=etag_of(data))

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Store ``data`` at ``key`` atomically; return its ETag.

        ``if_match`` (an ETag, quoted or not, or ``*`` for "exists") and ``if_none_match`` are
        checked under the lock, and a failed check raises PreconditionFailed without a write.
        """
        path = self._path(key)
        with self._locked():
            if if_match is not None or if_none_match:
                try:
                    current = self._read(path)
                except OSError as exc:
                    if exc.errno != errno.ENAMETOOLONG:
                        raise BackendError(
                            f"local storage: cannot read {key!r}: {exc.strerror}"
                        ) from None
                    current = None  # could never have been stored: the write below says so
                if if_none_match and current is not None:
                    raise PreconditionFailed(f"local storage: object {key!r} already exists")
                if if_match is not None:
                    wanted = _normalise_etag(if_match)
                    if current is None:
                        raise PreconditionFailed(f"local storage: object {key!r} does not exist")
                    if wanted != "*" and wanted != _normalise_etag(etag_of(current)):
                        raise PreconditionFailed(
                            f"local storage: object {key!r} has changed (ETag mismatch)"
                        )
            try:
                self._write(path, bytes(data))
            except OSError as exc:
                if exc.errno in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR):
                    raise ValidationError(f"local storage: key {key!r} cannot be stored") from None
                raise BackendError(f"local storage: cannot write {key!r}: {exc.strerror}") from None
        logger.debug("storage put", backend="local", key=key, size=len(data))
        return etag_of(data)

    def _write(self, path: Path, data: bytes) -> None:
        folder = path.parent
        # One level at a time: mkdir(parents=True) would give the parents the default mode.
        current = self.root
        for part in folder.relative_to(self.root).parts:
            current = current / part
            current.mkdir(exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=RESERVED + "tmp-")  # created 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)

    def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed. Empty folders left behind are removed."""
        path = self._path(key)
        with self._locked():
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return False
            except OSError as exc:
                if exc.errno == errno.ENAMETOOLONG:  # could never have been stored
                    return False
                raise BackendError(
                    f"local storage: cannot delete {key!r}: {exc.strerror}"
                ) from None
            folder = path.parent
            while folder != self.root and folder.is_relative_to(self.root):
                try:
                    folder.rmdir()
                except OSError:
                    break  # not empty
                folder = folder.parent
        logger.debug("storage delete", backend="local", key=key)
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Return every key starting with ``prefix``, sorted."""
        keys: list[str] = []
        if not self.root.is_dir():
            return keys
        for folder, dirs, files in os.walk(self.root):
            rel = Path(folder).relative_to(self.root).parts
            base = "".join(part.removesuffix(CONTINUED) for part in rel)
            dirs[:] = [
                d
                for d in dirs
                if d.endswith((DIR_SUFFIX, CONTINUED)) and not d.startswith(RESERVED)
            ]
            for name in files:
                if name.startswith(RESERVED):
                    continue
                key = unquote(base + name)
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)


def _pieces(encoded: str, suffix: str) -> list[str]:
    """The path parts of one percent-encoded key segment: itself when it fits one file name,
    else pieces of :data:`PIECE` characters, each but the last in a ``%+`` folder."""
    if len(encoded) + len(suffix) <= NAME_MAX:
        return [encoded + suffix]
    cuts = range(0, len(encoded), PIECE)
    return [
        encoded[i : i + PIECE] + (suffix if i + PIECE >= len(encoded) else CONTINUED) for i in cuts
    ]


@hookimpl
def enclave_register_storage(registry: BackendRegistry[Any]) -> None:
    """Register the ``local`` storage backend."""
    registry.add(LocalStorage)
