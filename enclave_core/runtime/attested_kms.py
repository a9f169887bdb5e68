"""The enclave's side of KMS ``Recipient``: plaintext keys reach the runtime only inside a CMS
envelope that KMS made for a key pair living in this process.

:class:`RecipientSession` holds one boot's RSA-2048 key pair and its attestation document (renewed
after two hours), sends it with every Decrypt and GenerateDataKey, opens the
``CiphertextForRecipient`` and refuses an answer that carries a plaintext (docs/protocols.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from loguru import logger

from enclave_core.crypto.cms import open_ciphertext_for_recipient
from enclave_core.errors import CryptoError
from enclave_core.plugin.interfaces import Attestation, Kms, KmsResult, Recipient

RSA_BITS = 2048
#: Re-request the document after this long (seconds); the leaf certificate is valid for 3 h.
DOCUMENT_LIFETIME = 2 * 3600.0


class RecipientSession:
    """One boot's Recipient key pair and attestation document, and the KMS calls that use them.

    :param attestation: the NSM backend that signs the document.
    :param user_data: returns the ``user_data`` to bind (the runtime's TLS and signing keys), or
        None; called each time a document is requested.
    :param clock: monotonic seconds, injectable for tests.
    """

    def __init__(
        self,
        attestation: Attestation,
        *,
        user_data: Callable[[], bytes | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._attestation = attestation
        self._user_data = user_data
        self._clock = clock
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        self.public_key_der = self._private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._document: bytes | None = None
        self._document_at = 0.0
        self._lock = threading.Lock()  # boot and the app API may both call in

    def __repr__(self) -> str:
        return "RecipientSession(RSA-2048)"

    def recipient(self) -> Recipient:
        """The ``Recipient`` to send: the current document, re-requested once it is stale."""
        with self._lock:
            now = self._clock()
            if self._document is None or now - self._document_at >= DOCUMENT_LIFETIME:
                user_data = self._user_data() if self._user_data is not None else None
                self._document = self._attestation.attestation(
                    user_data=user_data, public_key=self.public_key_der
                )
                self._document_at = now
                logger.info("recipient attestation document requested")
            return Recipient(attestation_document=self._document)

    def _open(self, result: KmsResult, operation: str, key_id: str) -> bytes:
        if result.plaintext is not None:
            raise CryptoError(
                f"KMS {operation} under {key_id} returned a plaintext although a Recipient was "
                "sent; refusing it (it must not leave KMS unencrypted)"
            )
        if not result.ciphertext_for_recipient:
            raise CryptoError(f"KMS {operation} under {key_id} returned no CiphertextForRecipient")
        try:
            return open_ciphertext_for_recipient(result.ciphertext_for_recipient, self._private_key)
        except CryptoError as exc:
            raise CryptoError(f"KMS {operation} under {key_id}: {exc}") from None

    def decrypt(self, kms: Kms, key_id: str, blob: bytes, context: dict[str, str]) -> bytes:
        """Decrypt ``blob`` through KMS with this session's Recipient; return the plaintext.

        :raises CryptoError: KMS answered with a plaintext, or without an envelope this key opens.
        """
        result = kms.decrypt(key_id, blob, context, self.recipient())
        return self._open(result, "Decrypt", key_id)

    def generate_data_key(
        self, kms: Kms, key_id: str, context: dict[str, str], number_of_bytes: int = 32
    ) -> tuple[bytes, bytes]:
        """Generate a data key through KMS with this session's Recipient.

        :returns: ``(ciphertext blob, plaintext)``; the blob is what gets stored.
        :raises CryptoError: as :meth:`decrypt`, or the answer lacks the ciphertext blob.
        """
        result = kms.generate_data_key(
            key_id, context, number_of_bytes=number_of_bytes, recipient=self.recipient()
        )
        plaintext = self._open(result, "GenerateDataKey", key_id)
        if not result.ciphertext_blob:
            raise CryptoError(f"KMS GenerateDataKey under {key_id} returned no ciphertext blob")
        return result.ciphertext_blob, plaintext
