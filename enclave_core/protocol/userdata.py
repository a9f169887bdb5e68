"""The attestation document's ``user_data`` as the runtime fills it and verifiers read it.

68 bytes, the layout nitriding uses: ``multihash(sha256(TLS certificate DER)) ||
multihash(sha256(raw Ed25519 response-signing public key))``, each multihash being the prefix
``0x12 0x20`` and the 32-byte digest (see docs/protocols.md).
"""

from __future__ import annotations

import hashlib

from enclave_core.errors import AttestationError

#: The multihash prefix of a SHA-256 digest (code 0x12, length 0x20), as nitriding uses.
SHA256_MULTIHASH = b"\x12\x20"
USER_DATA_SIZE = 68


def attestation_user_data(tls_cert_der: bytes | None, signing_public_key: bytes) -> bytes:
    """The 68-byte ``user_data`` binding the TLS certificate and the response-signing key.

    Without a certificate the first digest is 32 zero bytes.
    """
    cert_digest = hashlib.sha256(tls_cert_der).digest() if tls_cert_der else bytes(32)
    key_digest = hashlib.sha256(signing_public_key).digest()
    return SHA256_MULTIHASH + cert_digest + SHA256_MULTIHASH + key_digest


def check_user_data(user_data: bytes | None) -> tuple[bytes, bytes]:
    """Split nitriding's 68-byte user_data; return (certificate digest, signing key digest)."""
    if user_data is None:
        raise AttestationError(
            f"user_data: the document has none; expected {USER_DATA_SIZE} bytes binding the TLS "
            "certificate and the response-signing key"
        )
    if len(user_data) != USER_DATA_SIZE:
        raise AttestationError(
            f"user_data: expected {USER_DATA_SIZE} bytes (nitriding layout), got {len(user_data)}"
        )
    for offset in (0, 34):
        if user_data[offset : offset + 2] != SHA256_MULTIHASH:
            raise AttestationError(
                f"user_data: bytes {offset}-{offset + 1} are {user_data[offset : offset + 2].hex()}"
                f", not the SHA-256 multihash prefix {SHA256_MULTIHASH.hex()}"
            )
    return user_data[2:34], user_data[36:68]
