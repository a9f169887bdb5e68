"""The KMS side of ``Recipient``: what KMS checks before it answers with CiphertextForRecipient.

Used by the local KMS (and usable by test doubles of AWS KMS): the request names
``RSAES_OAEP_SHA_256``, its attestation document verifies against the trusted root at the present
time, and the document's ``public_key`` is an RSA SubjectPublicKeyInfo of at least 2048 bits. The
document's PCRs then feed the ``kms:RecipientAttestation:*`` policy conditions, and the answer is
the plaintext enveloped for that key, in the BER layout KMS sends (docs/protocols.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_core.crypto.attestation import verify_document
from enclave_core.crypto.cms import build_ciphertext_for_recipient
from enclave_core.errors import ValidationError
from enclave_core.plugin.interfaces import Recipient

RECIPIENT_ALGORITHM = "RSAES_OAEP_SHA_256"
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class VerifiedRecipient:
    """A Recipient whose attestation document verified: its PCRs and the enclave's RSA key."""

    module_id: str
    pcrs: dict[int, bytes]
    public_key: rsa.RSAPublicKey

    def envelope(self, plaintext: bytes) -> bytes:
        """``plaintext`` as a CiphertextForRecipient for this enclave's key (BER, as KMS sends)."""
        return build_ciphertext_for_recipient(plaintext, self.public_key, indefinite_length=True)


def verify_recipient(
    recipient: Recipient, *, root: x509.Certificate, at: datetime | None = None
) -> VerifiedRecipient:
    """Check a Recipient as KMS does.

    :param root: the only trust anchor (AWS KMS: the AWS Nitro root; the local KMS: the dev root).
    :param at: when the document's certificates must be valid; default now.
    :raises ValidationError: the algorithm is not RSAES_OAEP_SHA_256, or the document's
        ``public_key`` is not an RSA SubjectPublicKeyInfo of at least 2048 bits.
    :raises AttestationError: the document does not verify (the message names the check).
    """
    if recipient.key_encryption_algorithm != RECIPIENT_ALGORITHM:
        raise ValidationError(
            f"Recipient KeyEncryptionAlgorithm must be {RECIPIENT_ALGORITHM}, "
            f"not {recipient.key_encryption_algorithm!r}"
        )
    document = verify_document(
        bytes(recipient.attestation_document), root=root, at=at or datetime.now(UTC)
    )
    try:
        key = serialization.load_der_public_key(document.public_key or b"")
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        raise ValidationError(
            "the Recipient attestation document's public_key is not an RSA "
            f"SubjectPublicKeyInfo of at least {MIN_RSA_BITS} bits"
        )
    return VerifiedRecipient(module_id=document.module_id, pcrs=document.pcrs, public_key=key)
