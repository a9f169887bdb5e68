"""``local`` secrets: a parameter store in one JSON file.

Options (``secrets.options``): ``path``, the file, relative to enclave.yaml's folder (default
``.enclave/secrets.json``). It maps full names (``/{prefix}/{name}/KMSKeyID``, as in SSM) to
strings and is rewritten atomically under a ``flock`` (mode 0600), so concurrent writers lose
nothing; names follow SSM's rules, and a corrupted file is reported, never treated as empty.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from loguru import logger
from marshmallow import Schema, fields

from enclave_core import hookimpl
from enclave_core.errors import BackendError, ValidationError
from enclave_core.plugin.interfaces import BackendContext
from enclave_core.plugin.registry import BackendRegistry

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")
MAX_NAME = 1011  # SSM's limit for a full parameter name


class LocalSecrets:
    """Parameters of one app in a local JSON file (see the module docstring)."""

    name: ClassVar[str] = "local"

    class Options(Schema):
        """``secrets.options`` of the local backend."""

        path = fields.String(load_default=".enclave/secrets.json")

    def __init__(self, path: Path, *, prefix: str, app_name: str) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.base = f"/{prefix}/{app_name}/"

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> LocalSecrets:
        """Build the backend for ``/{context.prefix}/{context.name}/``."""
        return cls(context.resolve(options["path"]), prefix=context.prefix, app_name=context.name)

    def _full(self, name: str) -> str:
        """Return the full parameter name of ``name``; refuse malformed names."""
        if not isinstance(name, str) or not _NAME.match(name) or ".." in name.split("/"):
            raise ValidationError(f"local secrets: invalid parameter name {name!r}")
        full = self.base + name
        if len(full) > MAX_NAME:
            raise ValidationError(f"local secrets: parameter name {name!r} is too long")
        return full

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _load(self) -> dict[str, str]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise BackendError(f"local secrets: cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            # Name where, never what: the file holds parameter values.
            where = f"line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "bad UTF-8"
            raise BackendError(
                f"local secrets: {self.path} is corrupted (not valid JSON, {where}); "
                "restore it or remove it to start empty"
            ) from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise BackendError(
                f"local secrets: {self.path} is corrupted (expected an object of strings); "
                "restore it or remove it to start empty"
            )
        return data

    def _store(self, data: dict[str, str]) -> None:
        payload = json.dumps(data, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        folder = self.path.parent
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.tmp-")  # created 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, name: str) -> str | None:
        """Return the value of ``name``, or None when it is absent."""
        return self._load().get(self._full(name))

    def put(self, name: str, value: str) -> None:
        """Create or overwrite ``name`` atomically."""
        full = self._full(name)
        if not isinstance(value, str):
            raise ValidationError(f"local secrets: the value of {name!r} must be a string")
        with self._locked():
            data = self._load()
            data[full] = value
            self._store(data)
        logger.debug("parameter put", backend="local", parameter=full)

    def create(self, name: str, value: str) -> bool:
        """Store ``name`` only if it is absent (under the lock); return whether it was stored."""
        full = self._full(name)
        if not isinstance(value, str):
            raise ValidationError(f"local secrets: the value of {name!r} must be a string")
        with self._locked():
            data = self._load()
            if full in data:
                return False
            data[full] = value
            self._store(data)
        logger.debug("parameter created", backend="local", parameter=full)
        return True

    def delete(self, name: str) -> bool:
        """Delete ``name``; return whether it existed."""
        full = self._full(name)
        with self._locked():
            data = self._load()
            if full not in data:
                return False
            del data[full]
            self._store(data)
        logger.debug("parameter deleted", backend="local", parameter=full)
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Return this app's relative names starting with ``prefix``, sorted."""
        start = self.base + prefix
        return sorted(k[len(self.base) :] for k in self._load() if k.startswith(start))


@hookimpl
def enclave_register_secrets(registry: BackendRegistry[Any]) -> None:
    """Register the ``local`` secrets backend."""
    registry.add(LocalSecrets)
