"""Dynamic secrets: JSON records in encrypted storage under ``secrets/{name}``.

A record is ``{"name","env_var","value","created_at","updated_at"}`` (``env_var`` may be null).
The app sets them through the app API; they reach its environment at its next start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loguru import logger

from enclave_core.errors import (
    CryptoError,
    EnclaveError,
    NotFound,
    PreconditionFailed,
    StateConflict,
    ValidationError,
)
from enclave_core.log import utc_now
from enclave_core.metrics import Metrics
from enclave_core.plugin.interfaces import Storage
from enclave_core.runtime.instrumented import counted
from enclave_core.runtime.validate import SECRETS_PREFIX, check_env_var, check_secret_name

_WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class DynamicSecret:
    """One dynamic secret as stored."""

    name: str
    value: str
    env_var: str | None
    created_at: str
    updated_at: str

    def describe(self, *, with_value: bool) -> dict[str, Any]:
        """The JSON the app API answers with (``env_var`` only when set, ``value`` on request)."""
        out: dict[str, Any] = {"name": self.name}
        if with_value:
            out["value"] = self.value
        if self.env_var is not None:
            out["env_var"] = self.env_var
        out["created_at"] = self.created_at
        out["updated_at"] = self.updated_at
        return out

    def record(self) -> bytes:
        """The stored JSON record."""
        return json.dumps(
            {
                "name": self.name,
                "env_var": self.env_var,
                "value": self.value,
                "created_at": self.created_at,
                "updated_at": self.updated_at,
            },
            sort_keys=True,
        ).encode("utf-8")


def _parse(name: str, data: bytes) -> DynamicSecret:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise CryptoError(f"dynamic secret {name!r}: stored record is not JSON") from None
    fields = ("value", "created_at", "updated_at")
    if (
        not isinstance(doc, dict)
        or doc.get("name") != name
        or not all(isinstance(doc.get(f), str) for f in fields)
        or not isinstance(doc.get("env_var"), (str, type(None)))
    ):
        raise CryptoError(f"dynamic secret {name!r}: stored record is malformed")
    return DynamicSecret(name, doc["value"], doc["env_var"], doc["created_at"], doc["updated_at"])


class DynamicSecrets:
    """The dynamic secret records over an (encrypted) Storage, counting ``secret_*``.

    :param storage: the encrypted storage.
    :param metrics: the runtime's counters.
    :param static_env_vars: env vars of the static secrets, which dynamic ones may not reuse.
    """

    def __init__(
        self, storage: Storage, metrics: Metrics, static_env_vars: frozenset[str] = frozenset()
    ) -> None:
        self._storage = storage
        self._metrics = metrics
        self._static_env_vars = static_env_vars

    def names(self) -> list[str]:
        """Names of every stored dynamic secret, sorted."""
        keys = counted(
            self._metrics, "secret_reads", None, lambda: self._storage.list(SECRETS_PREFIX)
        )
        return sorted(k[len(SECRETS_PREFIX) :] for k in keys if k.startswith(SECRETS_PREFIX))

    def get(self, name: str) -> DynamicSecret:
        """Read one secret; NotFound when absent, CryptoError when unreadable."""
        check_secret_name(name)
        try:
            obj = counted(
                self._metrics,
                "secret_reads",
                None,
                lambda: self._storage.get(SECRETS_PREFIX + name),
            )
        except NotFound:
            raise NotFound(f"dynamic secret {name!r} does not exist") from None
        return _parse(name, obj.data)

    def load_all(self) -> tuple[list[DynamicSecret], list[str]]:
        """Read every secret; return the readable ones and the names of unreadable ones."""
        good: list[DynamicSecret] = []
        bad: list[str] = []
        for name in self.names():
            try:
                good.append(self.get(name))
            except NotFound:
                continue  # deleted meanwhile
            except EnclaveError as exc:
                logger.bind(secret=name, error=str(exc)).warning(
                    "dynamic secret unreadable; skipped"
                )
                bad.append(name)
        return good, bad

    def _check_env_var(self, name: str, env_var: str) -> None:
        check_env_var(env_var)
        if env_var in self._static_env_vars:
            raise ValidationError(f"invalid env_var: {env_var} is already used by a static secret")
        for other in self.load_all()[0]:
            if other.name != name and other.env_var == env_var:
                raise ValidationError(
                    f"invalid env_var: {env_var} is already used by dynamic secret {other.name!r}"
                )

    def put(self, name: str, value: str, env_var: str | None = None) -> tuple[DynamicSecret, bool]:
        """Create or replace a secret, keeping its ``created_at``.

        :returns: the stored record and whether it was created (rather than replaced).
        """
        check_secret_name(name)
        if env_var is not None:
            self._check_env_var(name, env_var)
        key = SECRETS_PREFIX + name
        for _ in range(_WRITE_ATTEMPTS):
            now = utc_now()
            try:
                current = self._storage.get(key)
            except NotFound:
                etag, created = None, now
            else:
                etag, created = current.etag, _parse(name, current.data).created_at
            secret = DynamicSecret(name, value, env_var, created, now)
            try:
                self._write(key, secret.record(), etag)
            except PreconditionFailed:
                continue  # a concurrent writer won; read again so created_at stays right
            return secret, etag is None
        raise StateConflict(f"dynamic secret {name!r} is being changed concurrently; try again")

    def _write(self, key: str, record: bytes, etag: str | None) -> None:
        # Conditional on what was read, so a concurrent change is never silently overwritten.
        counted(
            self._metrics,
            "secret_writes",
            None,
            lambda: self._storage.put(key, record, if_match=etag, if_none_match=etag is None),
        )

    def delete(self, name: str) -> bool:
        """Delete a secret; return whether it existed."""
        check_secret_name(name)
        return counted(
            self._metrics,
            "secret_deletes",
            None,
            lambda: self._storage.delete(SECRETS_PREFIX + name),
        )
