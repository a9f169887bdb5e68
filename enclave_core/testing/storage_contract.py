"""The Storage contract: what :class:`~enclave_core.plugin.interfaces.Storage` promises.

Round trips of any bytes under the core's keys, ETags, conditional writes that fail with
:class:`~enclave_core.errors.PreconditionFailed` and change nothing (one winner among racers),
``delete`` and a sorted, plain-prefix ``list``.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import pytest

from enclave_core.errors import NotFound, PreconditionFailed
from enclave_core.plugin.interfaces import Storage
from enclave_core.testing.contract_base import RACERS, BackendContract, race

#: Keys the core's app API accepts, beyond plain ASCII names.
UNUSUAL_KEYS = (
    "notes/hello world.txt",
    "notes/100% #1?a=b&c+d",
    "notes/ünïcödé-✓",
    "notes/~tilde_under-dash.dot",
)
#: The longest key the core accepts (``STORAGE_KEY_PATTERN``: 512 characters), in one segment.
LONGEST_KEY = "k" * 512


class StorageContract(BackendContract):
    """Subclass as ``TestMyStorage(StorageContract)`` and say which backend (``backend_class``
    or a ``backend`` fixture) to check it against the Storage contract."""

    protocol: ClassVar[type[Any]] = Storage

    # ------------------------------------------------------------------ get / put

    def test_get_of_a_missing_key_raises_not_found(self, backend: Storage) -> None:
        with pytest.raises(NotFound):
            backend.get("contract/missing")

    def test_put_returns_the_etag_get_reports(self, backend: Storage) -> None:
        etag = backend.put("contract/a", b"first")
        assert isinstance(etag, str) and etag
        stored = backend.get("contract/a")
        assert (stored.data, stored.etag) == (b"first", etag)

    def test_put_overwrites_and_gives_a_new_etag(self, backend: Storage) -> None:
        first = backend.put("contract/a", b"first")
        second = backend.put("contract/a", b"second, longer")
        assert second != first
        assert backend.get("contract/a").data == b"second, longer"
        assert backend.get("contract/a").etag == second

    def test_any_bytes_round_trip(self, backend: Storage) -> None:
        every_byte = bytes(range(256)) * 4
        large = os.urandom(1024 * 1024 + 17)
        backend.put("contract/bytes", every_byte)
        backend.put("contract/large", large)
        assert backend.get("contract/bytes").data == every_byte
        assert backend.get("contract/large").data == large

    def test_keys_the_core_accepts_round_trip_and_list(self, backend: Storage) -> None:
        for index, key in enumerate(UNUSUAL_KEYS):
            backend.put(key, b"value %d" % index)
        for index, key in enumerate(UNUSUAL_KEYS):
            assert backend.get(key).data == b"value %d" % index, key
        assert backend.list() == sorted(UNUSUAL_KEYS)

    def test_the_longest_key_the_core_accepts_round_trips(self, backend: Storage) -> None:
        etag = backend.put(LONGEST_KEY, b"long", if_none_match=True)
        assert backend.get(LONGEST_KEY).etag == etag
        assert backend.list("k") == [LONGEST_KEY]
        assert backend.delete(LONGEST_KEY) is True

    def test_a_key_and_keys_below_it_coexist(self, backend: Storage) -> None:
        backend.put("a", b"top")
        backend.put("a/b", b"middle")
        backend.put("a/b/c", b"bottom")
        assert [backend.get(k).data for k in ("a", "a/b", "a/b/c")] == [
            b"top",
            b"middle",
            b"bottom",
        ]
        assert backend.delete("a/b") is True
        assert backend.get("a").data == b"top" and backend.get("a/b/c").data == b"bottom"
        with pytest.raises(NotFound):
            backend.get("a/b")

    # ------------------------------------------------------------------ conditional writes

    def test_if_none_match_creates_an_absent_key(self, backend: Storage) -> None:
        etag = backend.put("contract/new", b"created", if_none_match=True)
        assert backend.get("contract/new").data == b"created"
        assert backend.get("contract/new").etag == etag

    def test_if_none_match_on_an_existing_key_fails_and_changes_nothing(
        self, backend: Storage
    ) -> None:
        etag = backend.put("contract/k", b"original")
        with pytest.raises(PreconditionFailed):
            backend.put("contract/k", b"intruder", if_none_match=True)
        stored = backend.get("contract/k")
        assert (stored.data, stored.etag) == (b"original", etag)

    def test_if_match_with_the_current_etag_writes(self, backend: Storage) -> None:
        first = backend.put("contract/k", b"v1")
        second = backend.put("contract/k", b"v2", if_match=first)
        assert second != first
        assert backend.get("contract/k").data == b"v2"
        # The ETag get reports is as good as the one put returned.
        third = backend.put("contract/k", b"v3", if_match=backend.get("contract/k").etag)
        stored = backend.get("contract/k")
        assert (stored.data, stored.etag) == (b"v3", third)

    def test_if_match_with_a_stale_etag_fails_and_changes_nothing(self, backend: Storage) -> None:
        stale = backend.put("contract/k", b"v1")
        current = backend.put("contract/k", b"v2")
        with pytest.raises(PreconditionFailed):
            backend.put("contract/k", b"lost update", if_match=stale)
        stored = backend.get("contract/k")
        assert (stored.data, stored.etag) == (b"v2", current)

    def test_if_match_of_another_objects_etag_fails(self, backend: Storage) -> None:
        other = backend.put("contract/other", b"other object")
        backend.put("contract/k", b"v1")
        with pytest.raises(PreconditionFailed):
            backend.put("contract/k", b"v2", if_match=other)
        assert backend.get("contract/k").data == b"v1"

    def test_if_match_on_a_missing_key_fails_and_creates_nothing(self, backend: Storage) -> None:
        etag = backend.put("contract/elsewhere", b"x")
        with pytest.raises(PreconditionFailed):
            backend.put("contract/missing", b"x", if_match=etag)
        with pytest.raises(NotFound):
            backend.get("contract/missing")
        assert backend.list("contract/missing") == []

    def test_if_match_after_delete_fails(self, backend: Storage) -> None:
        etag = backend.put("contract/k", b"v1")
        assert backend.delete("contract/k") is True
        with pytest.raises(PreconditionFailed):
            backend.put("contract/k", b"v2", if_match=etag)
        with pytest.raises(NotFound):
            backend.get("contract/k")

    def test_if_none_match_after_delete_creates_again(self, backend: Storage) -> None:
        backend.put("contract/k", b"v1")
        backend.delete("contract/k")
        backend.put("contract/k", b"v2", if_none_match=True)
        assert backend.get("contract/k").data == b"v2"

    def test_concurrent_if_none_match_writes_exactly_one_wins(self, backend: Storage) -> None:
        _exactly_one_wins(backend, if_none_match=True)

    def test_concurrent_if_match_writes_exactly_one_wins(self, backend: Storage) -> None:
        _exactly_one_wins(backend, if_match=backend.put("contract/race", b"base"))

    # ------------------------------------------------------------------ delete / list

    def test_delete_returns_whether_the_object_existed(self, backend: Storage) -> None:
        backend.put("contract/k", b"v")
        assert backend.delete("contract/k") is True
        with pytest.raises(NotFound):
            backend.get("contract/k")
        assert backend.delete("contract/k") is False
        assert backend.delete("contract/never") is False

    def test_list_of_an_empty_store_is_empty(self, backend: Storage) -> None:
        assert backend.list() == []
        assert backend.list("contract/") == []

    def test_list_returns_every_key_sorted(self, backend: Storage) -> None:
        keys = ["zeta", "alpha/2", "alpha/10", "Beta", "alpha", "m/n/o/p"]
        for key in keys:
            backend.put(key, key.encode())
        assert backend.list() == sorted(keys)
        assert backend.list("") == sorted(keys)

    def test_list_prefix_is_a_plain_string_prefix(self, backend: Storage) -> None:
        for key in ("a/b", "a/b/c", "a/bc", "a/c", "ab", "b"):
            backend.put(key, b"x")
        assert backend.list("a/b") == ["a/b", "a/b/c", "a/bc"]
        assert backend.list("a/b/") == ["a/b/c"]
        assert backend.list("a") == ["a/b", "a/b/c", "a/bc", "a/c", "ab"]
        assert backend.list("a/b/c") == ["a/b/c"]
        assert backend.list("nothing") == []

    def test_list_forgets_deleted_keys(self, backend: Storage) -> None:
        for key in ("d/1", "d/2", "d/3"):
            backend.put(key, b"x")
        backend.delete("d/2")
        assert backend.list("d/") == ["d/1", "d/3"]
        backend.delete("d/1")
        backend.delete("d/3")
        assert backend.list() == []


def _exactly_one_wins(backend: Storage, **condition: Any) -> None:
    """:data:`RACERS` threads put ``contract/race`` under one condition: one wins, the rest get
    PreconditionFailed, and the winner's bytes and ETag are what is stored."""
    results = race(RACERS, lambda i: backend.put("contract/race", b"writer %d" % i, **condition))
    won = [i for i, r in enumerate(results) if isinstance(r, str)]
    lost = [r for r in results if isinstance(r, PreconditionFailed)]
    assert len(won) == 1 and len(lost) == RACERS - 1, results
    stored = backend.get("contract/race")
    assert (stored.data, stored.etag) == (b"writer %d" % won[0], results[won[0]])
