"""The Secrets contract: what :class:`~enclave_core.plugin.interfaces.Secrets` promises.

Names relative to ``/{prefix}/{name}/``, string values, atomic ``put``, ``delete`` and ``list``
as documented, and the optional ``create`` that exactly one of racing callers wins.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from enclave_core.plugin.interfaces import Secrets
from enclave_core.testing.contract_base import RACERS, BackendContract, race

#: A base64 value of the size of an attestation document (over SSM's 4 KB Standard tier).
LARGE_VALUE = base64.b64encode(bytes(range(256)) * 20).decode("ascii")


def _create(backend: Any) -> Callable[[str, str], bool]:
    create: Callable[[str, str], bool] | None = getattr(backend, "create", None)
    if create is None:
        pytest.skip(f"{type(backend).__name__} has no create() (optional, strongly recommended)")
    return create


class SecretsContract(BackendContract):
    """Subclass as ``TestMySecrets(SecretsContract)`` and say which backend (``backend_class``
    or a ``backend`` fixture) to check it against the Secrets contract."""

    protocol: ClassVar[type[Any]] = Secrets

    # ------------------------------------------------------------------ get / put

    def test_get_of_an_absent_name_is_none(self, backend: Secrets) -> None:
        assert backend.get("KMSKeyID") is None
        assert backend.get("signing_key/Ciphertext") is None

    def test_put_then_get(self, backend: Secrets) -> None:
        backend.put("KMSKeyID", "1234abcd-12ab-34cd-56ef-1234567890ab")
        assert backend.get("KMSKeyID") == "1234abcd-12ab-34cd-56ef-1234567890ab"

    def test_put_overwrites(self, backend: Secrets) -> None:
        backend.put("PCR0", "first")
        backend.put("PCR0", "second")
        assert backend.get("PCR0") == "second"

    def test_names_with_folders(self, backend: Secrets) -> None:
        backend.put("signing_key/Ciphertext", "c2lnbmluZw==")
        backend.put("a/b/c", "deep")
        backend.put("a/b", "beside its folder")
        assert backend.get("signing_key/Ciphertext") == "c2lnbmluZw=="
        assert backend.get("a/b/c") == "deep"
        assert backend.get("a/b") == "beside its folder"
        assert backend.get("signing_key") is None

    def test_values_round_trip(self, backend: Secrets) -> None:
        values = {
            "b64": base64.b64encode(os.urandom(48)).decode("ascii"),
            "large": LARGE_VALUE,
            "json": '{"kid": "abc", "note": "two\\nlines, \\"quoted\\""}\n',
            "text": "naïve café ✓",
        }
        for name, value in values.items():
            backend.put(name, value)
        for name, value in values.items():
            assert backend.get(name) == value, name

    def test_a_large_value_can_be_replaced_by_a_small_one(self, backend: Secrets) -> None:
        backend.put("AttestationDocument", LARGE_VALUE)
        backend.put("AttestationDocument", "small")
        assert backend.get("AttestationDocument") == "small"

    def test_concurrent_puts_of_different_names_lose_nothing(self, backend: Secrets) -> None:
        results = race(RACERS, lambda i: backend.put(f"race/{i}", f"value {i}"))
        assert all(r is None for r in results), results
        assert [backend.get(f"race/{i}") for i in range(RACERS)] == [
            f"value {i}" for i in range(RACERS)
        ]

    # ------------------------------------------------------------------ delete / list

    def test_delete_returns_whether_the_name_existed(self, backend: Secrets) -> None:
        backend.put("gone", "soon")
        assert backend.delete("gone") is True
        assert backend.get("gone") is None
        assert backend.delete("gone") is False
        assert backend.delete("never/was") is False

    def test_list_of_an_empty_store_is_empty(self, backend: Secrets) -> None:
        assert backend.list() == []
        assert backend.list("signing_key/") == []

    def test_list_returns_relative_names_sorted(self, backend: Secrets) -> None:
        names = ["StorageDEK/Ciphertext", "KMSKeyID", "signing_key/Ciphertext", "PCR0", "a.b-c_d"]
        for name in names:
            backend.put(name, "v")
        assert backend.list() == sorted(names)
        assert backend.list("") == sorted(names)

    def test_list_prefix_is_a_plain_string_prefix(self, backend: Secrets) -> None:
        for name in ("a/b", "a/b/c", "a/bc", "a/c", "ab", "b"):
            backend.put(name, "v")
        assert backend.list("a/b") == ["a/b", "a/b/c", "a/bc"]
        assert backend.list("a/b/") == ["a/b/c"]
        assert backend.list("a") == ["a/b", "a/b/c", "a/bc", "a/c", "ab"]
        assert backend.list("nothing") == []

    def test_list_forgets_deleted_names(self, backend: Secrets) -> None:
        for name in ("d/1", "d/2", "d/3"):
            backend.put(name, "v")
        backend.delete("d/2")
        assert backend.list("d/") == ["d/1", "d/3"]

    # ------------------------------------------------------------------ create (optional)

    def test_create_stores_an_absent_name(self, backend: Secrets) -> None:
        create = _create(backend)
        assert create("StorageDEK/Ciphertext", "first") is True
        assert backend.get("StorageDEK/Ciphertext") == "first"

    def test_create_of_an_existing_name_writes_nothing(self, backend: Secrets) -> None:
        create = _create(backend)
        backend.put("StorageDEK/Ciphertext", "kept")
        assert create("StorageDEK/Ciphertext", "second") is False
        assert backend.get("StorageDEK/Ciphertext") == "kept"
        assert create("StorageDEK/Ciphertext", "third") is False
        assert backend.get("StorageDEK/Ciphertext") == "kept"

    def test_create_after_delete_stores_again(self, backend: Secrets) -> None:
        create = _create(backend)
        assert create("n", "one") is True
        assert backend.delete("n") is True
        assert create("n", "two") is True
        assert backend.get("n") == "two"

    def test_concurrent_creates_exactly_one_returns_true(self, backend: Secrets) -> None:
        create = _create(backend)
        results = race(RACERS, lambda i: create("StorageDEK/Ciphertext", f"key of booter {i}"))
        winners = [i for i, r in enumerate(results) if r is True]
        assert len(winners) == 1 and results.count(False) == RACERS - 1, results
        assert backend.get("StorageDEK/Ciphertext") == f"key of booter {winners[0]}"

    # ------------------------------------------------------------------ /{prefix}/{name}/

    def test_instances_of_one_app_share_their_parameters(
        self, backend: Secrets, make_backend: Callable[..., Secrets]
    ) -> None:
        other_instance = make_backend()
        backend.put("KMSKeyID", "shared")
        assert other_instance.get("KMSKeyID") == "shared"
        other_instance.put("KMSKeyID", "changed by the other instance")
        assert backend.get("KMSKeyID") == "changed by the other instance"
        assert other_instance.list() == backend.list() == ["KMSKeyID"]

    def test_another_app_never_sees_these_parameters(
        self, backend: Secrets, make_backend: Callable[..., Secrets]
    ) -> None:
        self._isolated(backend, make_backend(name="other-app"))

    def test_another_deployment_prefix_never_sees_these_parameters(
        self, backend: Secrets, make_backend: Callable[..., Secrets]
    ) -> None:
        self._isolated(backend, make_backend(prefix="prod"))

    @staticmethod
    def _isolated(backend: Secrets, other: Secrets) -> None:
        backend.put("KMSKeyID", "mine")
        backend.put("signing_key/Ciphertext", "mine too")
        assert other.get("KMSKeyID") is None
        assert other.list() == []
        other.put("KMSKeyID", "theirs")
        assert backend.get("KMSKeyID") == "mine"
        assert other.get("KMSKeyID") == "theirs"
        assert other.delete("signing_key/Ciphertext") is False
        assert backend.get("signing_key/Ciphertext") == "mine too"
        assert backend.list() == ["KMSKeyID", "signing_key/Ciphertext"]
