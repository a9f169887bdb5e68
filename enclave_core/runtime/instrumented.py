"""Counting decorators: backends wrapped so every call updates the runtime's counters.

Wrapping keeps the counting in one place instead of sprinkling increments over the boot code and
the app API. A miss (``NotFound``) or a lost conditional write (``PreconditionFailed``) is an
answer, not a failure, so it does not count as a storage error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from enclave_core.errors import NotFound, PreconditionFailed
from enclave_core.metrics import Metrics
from enclave_core.plugin.interfaces import (
    GrantInfo,
    KeyInfo,
    Kms,
    KmsResult,
    Recipient,
    Secrets,
    Storage,
    StoredObject,
)
from enclave_core.plugin.parameters import create_parameter

T = TypeVar("T")

_EXPECTED = (NotFound, PreconditionFailed)


def counted(metrics: Metrics, counter: str, error_counter: str | None, call: Callable[[], T]) -> T:
    """Run ``call``, adding one to ``counter``; add one to ``error_counter`` if it fails."""
    metrics.inc(counter)
    try:
        return call()
    except _EXPECTED:
        raise
    except Exception:
        if error_counter is not None:
            metrics.inc(error_counter)
        raise


class CountingStorage:
    """A Storage counting ``storage_reads``/``writes``/``deletes``/``errors``."""

    name: ClassVar[str] = "counting"

    def __init__(self, inner: Storage, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"CountingStorage({self._inner!r})"

    def get(self, key: str) -> StoredObject:
        """Read an object (``storage_reads``)."""
        return counted(
            self._metrics, "storage_reads", "storage_errors", lambda: self._inner.get(key)
        )

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Write an object (``storage_writes``)."""
        return counted(
            self._metrics,
            "storage_writes",
            "storage_errors",
            lambda: self._inner.put(key, data, if_match=if_match, if_none_match=if_none_match),
        )

    def delete(self, key: str) -> bool:
        """Delete an object (``storage_deletes``)."""
        return counted(
            self._metrics, "storage_deletes", "storage_errors", lambda: self._inner.delete(key)
        )

    def list(self, prefix: str = "") -> list[str]:
        """List keys (``storage_reads``)."""
        return counted(
            self._metrics, "storage_reads", "storage_errors", lambda: self._inner.list(prefix)
        )


class CountingSecrets:
    """A Secrets backend counting ``secret_reads``/``writes``/``deletes``."""

    name: ClassVar[str] = "counting"

    def __init__(self, inner: Secrets, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"CountingSecrets({self._inner!r})"

    def get(self, name: str) -> str | None:
        """Read a parameter (``secret_reads``)."""
        return counted(self._metrics, "secret_reads", None, lambda: self._inner.get(name))

    def put(self, name: str, value: str) -> None:
        """Write a parameter (``secret_writes``)."""
        counted(self._metrics, "secret_writes", None, lambda: self._inner.put(name, value))

    def create(self, name: str, value: str) -> bool:
        """Create a parameter if absent (``secret_writes``); see :func:`create_parameter`."""
        return counted(
            self._metrics, "secret_writes", None, lambda: create_parameter(self._inner, name, value)
        )

    def delete(self, name: str) -> bool:
        """Delete a parameter (``secret_deletes``)."""
        return counted(self._metrics, "secret_deletes", None, lambda: self._inner.delete(name))

    def list(self, prefix: str = "") -> list[str]:
        """List parameters (``secret_reads``)."""
        return counted(self._metrics, "secret_reads", None, lambda: self._inner.list(prefix))


#: Optional Kms methods, present on the wrapper exactly when the wrapped backend has them.
OPTIONAL_KMS_METHODS = frozenset(
    {"create_grant", "retire_grant", "revoke_grant", "import_key_material"}
)


class CountingKms:
    """A Kms backend counting ``kms_operations`` and ``kms_errors`` (every failure counts).

    The optional methods (:data:`OPTIONAL_KMS_METHODS`) are passed through, counted, only when
    the wrapped backend has them, so ``hasattr`` on the wrapper answers as on the backend.
    """

    name: ClassVar[str] = "counting"

    def __init__(self, inner: Kms, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"CountingKms({self._inner!r})"

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("_inner")
        if name not in OPTIONAL_KMS_METHODS or inner is None:
            raise AttributeError(name)
        method = getattr(inner, name)  # AttributeError when the backend lacks it

        def counted_call(*args: Any, **kwargs: Any) -> Any:
            return self._call(lambda: method(*args, **kwargs))

        counted_call.__name__ = name
        counted_call.__doc__ = method.__doc__
        return counted_call

    def _call(self, fn: Callable[[], T]) -> T:
        self._metrics.inc("kms_operations")
        try:
            return fn()
        except Exception:
            self._metrics.inc("kms_errors")
            raise

    def create_key(
        self,
        *,
        description: str = "",
        policy: dict[str, Any] | str | None = None,
        bypass_lockout_safety_check: bool = False,
        **kind: Any,
    ) -> KeyInfo:
        """Create a key (forwarding only the keywords given, as older backends may lack some;
        ``kind`` is the backend's own, such as ``origin`` or ``multi_region``)."""
        extra: dict[str, Any] = dict(kind)
        if policy is not None:
            extra["policy"] = policy
        if bypass_lockout_safety_check:
            extra["bypass_lockout_safety_check"] = True
        return self._call(lambda: self._inner.create_key(description=description, **extra))

    def describe_key(self, key_id: str) -> KeyInfo:
        """Describe a key."""
        return self._call(lambda: self._inner.describe_key(key_id))

    def get_key_policy(self, key_id: str) -> dict[str, Any]:
        """Read a key policy."""
        return self._call(lambda: self._inner.get_key_policy(key_id))

    def put_key_policy(
        self,
        key_id: str,
        policy: dict[str, Any] | str,
        *,
        bypass_lockout_safety_check: bool = False,
    ) -> None:
        """Replace a key policy."""
        self._call(
            lambda: self._inner.put_key_policy(
                key_id, policy, bypass_lockout_safety_check=bypass_lockout_safety_check
            )
        )

    def list_grants(self, key_id: str) -> list[GrantInfo]:
        """List a key's grants."""
        return self._call(lambda: self._inner.list_grants(key_id))

    def encrypt(self, key_id: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        """Encrypt under a key."""
        return self._call(lambda: self._inner.encrypt(key_id, plaintext, context))

    def decrypt(
        self,
        key_id: str,
        ciphertext: bytes,
        context: dict[str, str],
        recipient: Recipient | None = None,
    ) -> KmsResult:
        """Decrypt a ciphertext blob."""
        return self._call(lambda: self._inner.decrypt(key_id, ciphertext, context, recipient))

    def generate_data_key(
        self,
        key_id: str,
        context: dict[str, str],
        *,
        number_of_bytes: int = 32,
        recipient: Recipient | None = None,
    ) -> KmsResult:
        """Generate a data key."""
        return self._call(
            lambda: self._inner.generate_data_key(
                key_id, context, number_of_bytes=number_of_bytes, recipient=recipient
            )
        )

    def schedule_key_deletion(self, key_id: str, pending_window_days: int = 7) -> KeyInfo:
        """Schedule a key's deletion."""
        return self._call(lambda: self._inner.schedule_key_deletion(key_id, pending_window_days))

    def caller_arn(self) -> str:
        """The inner backend's principal (not a KMS operation, so not counted)."""
        return self._inner.caller_arn()
