"""AES-256-GCM envelope encryption for stored objects, over any :class:`Storage` backend.

Every object is stored as ``b"SE1" + nonce(12) + ciphertext || tag(16)``, with a fresh random
nonce per write. The associated data binds the object's own key name, so an object copied over
another key fails to decrypt (:class:`CryptoError`) instead of returning the wrong data. The data
encryption key (DEK) comes from KMS and is never logged, printed or kept outside the AEAD object.
"""

from __future__ import annotations

import os
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave_core.errors import CryptoError
from enclave_core.plugin.interfaces import Storage, StoredObject

MAGIC = b"SE1"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
STORAGE_AAD_PREFIX = b"simple-enclave/storage/v1\x00"


def _aead(key: bytes) -> AESGCM:
    if len(key) != KEY_BYTES:
        # Name the length only: the key itself must never reach a message.
        raise CryptoError(f"AES-256-GCM needs a {KEY_BYTES}-byte key, got {len(key)} bytes")
    return AESGCM(key)


def _seal(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + aead.encrypt(nonce, plaintext, aad)


def _open(aead: AESGCM, blob: bytes, aad: bytes, what: str) -> bytes:
    if len(blob) < len(MAGIC) + NONCE_BYTES + TAG_BYTES or not blob.startswith(MAGIC):
        raise CryptoError(f"{what} is not a Simple Enclave envelope (bad header or too short)")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    try:
        # A memoryview: slicing bytes would copy the whole object once more.
        return aead.decrypt(nonce, memoryview(blob)[len(MAGIC) + NONCE_BYTES :], aad)
    except InvalidTag:
        raise CryptoError(
            f"{what} failed authentication: it was modified, or belongs to another key or name"
        ) from None


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM-encrypt ``plaintext`` under ``key``, binding ``aad``; return the envelope."""
    return _seal(_aead(key), plaintext, aad)


def open_(key: bytes, blob: bytes, aad: bytes, *, what: str = "envelope") -> bytes:
    """Decrypt an envelope made by :func:`seal`; raise CryptoError if it does not authenticate.

    :param what: names the data in the error message (for example ``stored object 'a/b'``).
    """
    return _open(_aead(key), blob, aad, what)


def storage_aad(key: str) -> bytes:
    """The associated data binding a stored object to its key name."""
    return STORAGE_AAD_PREFIX + key.encode("utf-8")


class EncryptedStorage:
    """A :class:`Storage` that encrypts every object before it reaches the wrapped backend.

    ETags, ``If-Match`` and ``If-None-Match`` pass straight through: an object's ETag is the
    backend's ETag of its ciphertext.
    """

    name: ClassVar[str] = "encrypted"

    def __init__(self, storage: Storage, dek: bytes) -> None:
        self._inner = storage
        # Keep only the AEAD object, not a second copy of the key bytes.
        self._aead = _aead(dek)

    def __repr__(self) -> str:
        return f"EncryptedStorage({self._inner!r})"

    @property
    def inner(self) -> Storage:
        """The wrapped backend (it only ever sees ciphertext)."""
        return self._inner

    def get(self, key: str) -> StoredObject:
        """Read and decrypt ``key``; NotFound if absent, CryptoError if it does not authenticate."""
        obj = self._inner.get(key)
        plaintext = _open(self._aead, obj.data, storage_aad(key), f"stored object {key!r}")
        return StoredObject(data=plaintext, etag=obj.etag)

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Encrypt ``data`` bound to ``key`` and store it; return the backend's ETag."""
        blob = _seal(self._aead, data, storage_aad(key))
        return self._inner.put(key, blob, if_match=if_match, if_none_match=if_none_match)

    def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        return self._inner.delete(key)

    def list(self, prefix: str = "") -> list[str]:
        """List the keys starting with ``prefix`` (names are not encrypted)."""
        return self._inner.list(prefix)
