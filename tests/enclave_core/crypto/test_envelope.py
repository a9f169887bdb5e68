"""EncryptedStorage: AES-256-GCM envelopes bound to their key names, over any Storage."""

from __future__ import annotations

import os

import pytest

from enclave_core.crypto.envelope import (
    MAGIC,
    NONCE_BYTES,
    EncryptedStorage,
    open_,
    seal,
    storage_aad,
)
from enclave_core.errors import CryptoError, NotFound, PreconditionFailed
from tests.doubles.memory_backends import MemoryStorage

DEK = bytes(range(32))
PLAINTEXT = b"the quick brown fox: a plaintext that must never reach the backend"


@pytest.fixture
def backend() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def storage(backend: MemoryStorage) -> EncryptedStorage:
    return EncryptedStorage(backend, DEK)


def test_round_trip_returns_plaintext_and_backend_etag(
    storage: EncryptedStorage, backend: MemoryStorage
) -> None:
    etag = storage.put("docs/a.txt", PLAINTEXT)
    obj = storage.get("docs/a.txt")
    assert obj.data == PLAINTEXT
    assert obj.etag == etag == backend.get("docs/a.txt").etag
    assert storage.list("docs/") == ["docs/a.txt"]
    assert storage.delete("docs/a.txt") is True
    assert storage.delete("docs/a.txt") is False
    with pytest.raises(NotFound):
        storage.get("docs/a.txt")


def test_backend_holds_only_the_envelope(storage: EncryptedStorage, backend: MemoryStorage) -> None:
    storage.put("k", PLAINTEXT)
    storage.put("k2", PLAINTEXT)
    raw, raw2 = backend.objects["k"], backend.objects["k2"]
    assert raw.startswith(MAGIC)
    assert PLAINTEXT not in raw and b"quick brown" not in raw
    assert len(raw) == len(MAGIC) + NONCE_BYTES + len(PLAINTEXT) + 16
    # A fresh nonce per object: the same plaintext never gives the same bytes.
    assert raw[3 : 3 + NONCE_BYTES] != raw2[3 : 3 + NONCE_BYTES]
    assert raw[3 + NONCE_BYTES :] != raw2[3 + NONCE_BYTES :]


def test_object_copied_over_another_key_fails(
    storage: EncryptedStorage, backend: MemoryStorage
) -> None:
    storage.put("alice/balance", b"100")
    storage.put("mallory/balance", b"1")
    backend.objects["mallory/balance"] = backend.objects["alice/balance"]
    with pytest.raises(CryptoError, match="mallory/balance"):
        storage.get("mallory/balance")
    assert storage.get("alice/balance").data == b"100"


@pytest.mark.parametrize("position", [0, 3, 3 + NONCE_BYTES, -1])
def test_tampered_object_fails(
    storage: EncryptedStorage, backend: MemoryStorage, position: int
) -> None:
    storage.put("k", PLAINTEXT)
    raw = bytearray(backend.objects["k"])
    raw[position] ^= 0x01
    backend.objects["k"] = bytes(raw)
    with pytest.raises(CryptoError):
        storage.get("k")


def test_truncated_or_foreign_bytes_fail(storage: EncryptedStorage, backend: MemoryStorage) -> None:
    backend.objects["plain"] = b"just some plaintext written by someone else"
    backend.objects["short"] = MAGIC + b"\x00" * 10
    for key in ("plain", "short"):
        with pytest.raises(CryptoError, match="not a Simple Enclave envelope"):
            storage.get(key)


def test_another_dek_cannot_read(storage: EncryptedStorage, backend: MemoryStorage) -> None:
    storage.put("k", PLAINTEXT)
    with pytest.raises(CryptoError):
        EncryptedStorage(backend, os.urandom(32)).get("k")


def test_conditional_writes_pass_through(storage: EncryptedStorage, backend: MemoryStorage) -> None:
    first = storage.put("k", b"v1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        storage.put("k", b"v2", if_none_match=True)
    second = storage.put("k", b"v2", if_match=first)
    assert second != first
    with pytest.raises(PreconditionFailed):
        storage.put("k", b"v3", if_match=first)
    assert storage.get("k").data == b"v2"
    assert storage.get("k").etag == second


def test_dek_never_in_repr(storage: EncryptedStorage) -> None:
    text = repr(storage) + str(storage)
    assert DEK.hex() not in text and repr(DEK) not in text
    assert "MemoryStorage" in text


def test_wrong_dek_length_is_refused(backend: MemoryStorage) -> None:
    with pytest.raises(CryptoError, match="32-byte key, got 16 bytes"):
        EncryptedStorage(backend, bytes(16))


def test_seal_and_open_helpers() -> None:
    blob = seal(DEK, b"hello", b"aad-1")
    assert open_(DEK, blob, b"aad-1") == b"hello"
    with pytest.raises(CryptoError, match="secret thing"):
        open_(DEK, blob, b"aad-2", what="secret thing")
    assert storage_aad("a/b") == b"simple-enclave/storage/v1\x00a/b"
