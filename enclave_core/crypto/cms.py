"""KMS ``CiphertextForRecipient``: CMS EnvelopedData, opened in the enclave, built by the local KMS.

The layout (EnvelopedData v2, one KeyTransRecipientInfo named by the SHA-256 subjectKeyIdentifier,
RSAES-OAEP-SHA-256, AES-256-CBC; BER as KMS sends it, or DER) and everything the parser refuses
are in docs/protocols.md ("The CMS envelope KMS returns for a Recipient"). Every failure raises
:class:`CryptoError` naming the check, never key material or plaintext.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from asn1crypto import algos, cms, core, parser
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from enclave_core.errors import CryptoError

OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_DATA = "1.2.840.113549.1.7.1"
OID_RSAES_OAEP = "1.2.840.113549.1.1.7"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_P_SPECIFIED = "1.2.840.113549.1.1.9"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"

#: The RSA key size KMS expects in a Recipient attestation document.
RSA_KEY_BITS = 2048
CONTENT_KEY_BYTES = 32
IV_BYTES = 16
BLOCK_BYTES = 16
#: KMS answers are a few KiB; the bound keeps hostile input cheap to refuse.
MAX_ENVELOPE_BYTES = 1 << 20
DEFAULT_CHUNK_SIZE = 1000

_WHAT = "CiphertextForRecipient"


@dataclass(frozen=True)
class RecipientEnvelope:
    """The fields of a CiphertextForRecipient that passed every structural and algorithm check."""

    subject_key_identifier: bytes
    encrypted_key: bytes
    iv: bytes
    encrypted_content: bytes


def _oaep() -> asym_padding.OAEP:
    return asym_padding.OAEP(
        mgf=asym_padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    )


def _rsa_public_key(key: rsa.RSAPublicKey | bytes) -> rsa.RSAPublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        try:
            loaded = serialization.load_der_public_key(bytes(key))
        except (ValueError, UnsupportedAlgorithm):
            raise CryptoError("recipient public key is not a DER SubjectPublicKeyInfo") from None
        if isinstance(loaded, rsa.RSAPublicKey):
            return loaded
    raise CryptoError("recipient public key is not an RSA key")


def subject_key_identifier(public_key: rsa.RSAPublicKey | bytes) -> bytes:
    """Return the identifier KMS puts in ``rid``: SHA-256 of the key's DER SubjectPublicKeyInfo.

    :param public_key: an RSA public key, or its DER SubjectPublicKeyInfo.
    :returns: 32 bytes.
    """
    spki = _rsa_public_key(public_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def _is_absent(value: core.Asn1Value) -> bool:
    return isinstance(value, core.Void)


def _check_sha256(alg: core.Asn1Value, where: str) -> None:
    oid = alg["algorithm"].dotted
    if oid != OID_SHA256:
        raise CryptoError(f"{_WHAT}: RSAES-OAEP {where} is {oid}, expected sha256")
    # asn1crypto parses lazily: reading the parameters is what makes it refuse anything but
    # absent or NULL (ValueError, reported as malformed); the comparison guards the rest.
    if alg["parameters"].dump() not in (b"", b"\x05\x00"):
        raise CryptoError(f"{_WHAT}: RSAES-OAEP {where} sha256 carries unexpected parameters")


def _check_key_encryption_algorithm(alg: cms.KeyEncryptionAlgorithm) -> None:
    oid = alg["algorithm"].dotted
    if oid != OID_RSAES_OAEP:
        raise CryptoError(f"{_WHAT}: key encryption algorithm is {oid}, expected RSAES-OAEP")
    params = alg["parameters"]
    if _is_absent(params):
        raise CryptoError(f"{_WHAT}: RSAES-OAEP parameters are absent (that means SHA-1)")
    _check_sha256(params["hash_algorithm"], "hash")
    mgf = params["mask_gen_algorithm"]
    if mgf["algorithm"].dotted != OID_MGF1:
        raise CryptoError(f"{_WHAT}: RSAES-OAEP mask generation is {mgf['algorithm'].dotted}")
    _check_sha256(mgf["parameters"], "MGF1 hash")
    source = params["p_source_algorithm"]
    if source["algorithm"].dotted != OID_P_SPECIFIED or source["parameters"].native != b"":
        raise CryptoError(f"{_WHAT}: RSAES-OAEP label must be the empty default")


def _parse(data: bytes) -> RecipientEnvelope:
    _, _, _, header, contents, trailer = parser.parse(data)
    if len(header) + len(contents) + len(trailer) != len(data):
        raise CryptoError(f"{_WHAT}: trailing bytes after the ContentInfo")
    info = cms.ContentInfo.load(data, strict=True)
    if info["content_type"].dotted != OID_ENVELOPED_DATA:
        raise CryptoError(
            f"{_WHAT}: content type is {info['content_type'].dotted}, expected id-envelopedData"
        )
    enveloped = info["content"]
    if enveloped["version"].native != "v2":
        raise CryptoError(f"{_WHAT}: EnvelopedData version is not 2")
    if not _is_absent(enveloped["originator_info"]):
        raise CryptoError(f"{_WHAT}: unexpected originatorInfo")
    if not _is_absent(enveloped["unprotected_attrs"]):
        raise CryptoError(f"{_WHAT}: unexpected unprotectedAttrs")
    recipients = enveloped["recipient_infos"]
    if len(recipients) != 1:
        raise CryptoError(f"{_WHAT}: expected exactly one recipient, found {len(recipients)}")
    if recipients[0].name != "ktri":
        raise CryptoError(f"{_WHAT}: recipient is {recipients[0].name}, not KeyTransRecipientInfo")
    ktri = recipients[0].chosen
    if ktri["version"].native != "v2":
        raise CryptoError(f"{_WHAT}: KeyTransRecipientInfo version is not 2")
    if ktri["rid"].name != "subject_key_identifier":
        raise CryptoError(
            f"{_WHAT}: recipient is identified by {ktri['rid'].name}, expected subjectKeyIdentifier"
        )
    _check_key_encryption_algorithm(ktri["key_encryption_algorithm"])

    content_info = enveloped["encrypted_content_info"]
    if content_info["content_type"].dotted != OID_DATA:
        raise CryptoError(f"{_WHAT}: encrypted content type is not id-data")
    cipher_alg = content_info["content_encryption_algorithm"]
    if cipher_alg["algorithm"].dotted != OID_AES256_CBC:
        raise CryptoError(
            f"{_WHAT}: content encryption algorithm is "
            f"{cipher_alg['algorithm'].dotted}, expected aes256-CBC"
        )
    iv = cipher_alg["parameters"].native
    if not isinstance(iv, bytes) or len(iv) != IV_BYTES:
        raise CryptoError(f"{_WHAT}: aes256-CBC IV is not {IV_BYTES} bytes")
    encrypted = content_info["encrypted_content"]
    if _is_absent(encrypted):
        raise CryptoError(f"{_WHAT}: encryptedContent is absent")
    ciphertext = encrypted.native
    if not ciphertext or len(ciphertext) % BLOCK_BYTES:
        raise CryptoError(f"{_WHAT}: encrypted content is not a whole number of AES blocks")
    return RecipientEnvelope(
        subject_key_identifier=ktri["rid"].chosen.native,
        encrypted_key=ktri["encrypted_key"].native,
        iv=iv,
        encrypted_content=ciphertext,
    )


def parse_ciphertext_for_recipient(data: bytes) -> RecipientEnvelope:
    """Parse and check a CiphertextForRecipient (DER or BER) without decrypting it.

    :raises CryptoError: naming the first check that failed.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CryptoError(f"{_WHAT} must be bytes")
    data = bytes(data)
    if not data:
        raise CryptoError(f"{_WHAT} is empty")
    if len(data) > MAX_ENVELOPE_BYTES:
        raise CryptoError(f"{_WHAT} is larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        return _parse(data)
    except CryptoError:
        raise
    except Exception as exc:
        # asn1crypto parses lazily and reports malformed input as ValueError, TypeError,
        # KeyError, RecursionError...: all of them mean "not a valid envelope" here.
        raise CryptoError(
            f"{_WHAT} is malformed or truncated BER/DER ({type(exc).__name__})"
        ) from exc


def open_ciphertext_for_recipient(data: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """Decrypt a CiphertextForRecipient with the enclave's RSA private key; return the plaintext.

    :param data: the ``CiphertextForRecipient`` bytes from the KMS response.
    :param private_key: the private half of the key whose SubjectPublicKeyInfo was in the
        attestation document's ``public_key``.
    :raises CryptoError: naming the failed check (structure, algorithms, recipient, OAEP, padding).
    """
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise CryptoError(f"opening a {_WHAT} needs an RSA private key")
    envelope = parse_ciphertext_for_recipient(data)
    expected = subject_key_identifier(private_key.public_key())
    if not hmac.compare_digest(envelope.subject_key_identifier, expected):
        raise CryptoError(
            f"{_WHAT}: subjectKeyIdentifier does not match this RSA key (made for another key)"
        )
    try:
        content_key = private_key.decrypt(envelope.encrypted_key, _oaep())
    except ValueError:
        raise CryptoError(f"{_WHAT}: RSA-OAEP unwrap of the content key failed") from None
    if len(content_key) != CONTENT_KEY_BYTES:
        raise CryptoError(f"{_WHAT}: content key is not {CONTENT_KEY_BYTES} bytes")
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(envelope.iv)).decryptor()
    padded = decryptor.update(envelope.encrypted_content) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(BLOCK_BYTES * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CryptoError(f"{_WHAT}: bad PKCS#7 padding (wrong key or modified content)") from None


def _indefinite(identifier: bytes, body: bytes) -> bytes:
    # BER indefinite length: identifier, 0x80, contents, end-of-contents.
    return identifier + b"\x80" + body + b"\x00\x00"


def build_ciphertext_for_recipient(
    plaintext: bytes,
    recipient_public_key: rsa.RSAPublicKey | bytes,
    *,
    indefinite_length: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """Encrypt ``plaintext`` for the holder of ``recipient_public_key``, as KMS does.

    :param plaintext: the data KMS would otherwise return as ``Plaintext``.
    :param recipient_public_key: the RSA public key (or its DER SubjectPublicKeyInfo, as found in
        the attestation document's ``public_key``); at least 2048 bits.
    :param indefinite_length: emit KMS's BER layout (indefinite lengths, encrypted content in
        ``chunk_size``-byte OCTET STRING chunks) instead of DER.
    :param chunk_size: chunk length for the BER layout.
    :returns: the ContentInfo bytes.
    :raises CryptoError: the recipient key is not an RSA key of at least 2048 bits.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    public_key = _rsa_public_key(recipient_public_key)
    if public_key.key_size < RSA_KEY_BITS:
        raise CryptoError(f"recipient RSA key has {public_key.key_size} bits, need {RSA_KEY_BITS}")
    content_key = os.urandom(CONTENT_KEY_BYTES)
    iv = os.urandom(IV_BYTES)
    padder = sym_padding.PKCS7(BLOCK_BYTES * 8).padder()
    padded = padder.update(bytes(plaintext)) + padder.finalize()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    recipients = _recipient_infos(public_key, content_key)
    cipher_alg = algos.EncryptionAlgorithm(
        {"algorithm": "aes256_cbc", "parameters": core.OctetString(iv)}
    )
    if indefinite_length:
        return _ber_layout(recipients, cipher_alg, ciphertext, chunk_size)
    return _der_layout(recipients, cipher_alg, ciphertext)


def _recipient_infos(public_key: rsa.RSAPublicKey, content_key: bytes) -> cms.RecipientInfos:
    """One KeyTransRecipientInfo: the content key under RSAES-OAEP-SHA256, the recipient named
    by its subjectKeyIdentifier."""
    oaep_params = algos.RSAESOAEPParams(
        {
            "hash_algorithm": {"algorithm": "sha256"},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
        }
    )
    recipient = cms.KeyTransRecipientInfo(
        {
            "version": "v2",
            "rid": cms.RecipientIdentifier(
                name="subject_key_identifier", value=subject_key_identifier(public_key)
            ),
            "key_encryption_algorithm": {"algorithm": "rsaes_oaep", "parameters": oaep_params},
            "encrypted_key": public_key.encrypt(content_key, _oaep()),
        }
    )
    return cms.RecipientInfos([cms.RecipientInfo(name="ktri", value=recipient)])


def _der_layout(
    recipients: cms.RecipientInfos, cipher_alg: algos.EncryptionAlgorithm, ciphertext: bytes
) -> bytes:
    """The ContentInfo in DER."""
    return cms.ContentInfo(
        {
            "content_type": "enveloped_data",
            "content": cms.EnvelopedData(
                {
                    "version": "v2",
                    "recipient_infos": recipients,
                    "encrypted_content_info": {
                        "content_type": "data",
                        "content_encryption_algorithm": cipher_alg,
                        "encrypted_content": ciphertext,
                    },
                }
            ),
        }
    ).dump()


def _ber_layout(
    recipients: cms.RecipientInfos,
    cipher_alg: algos.EncryptionAlgorithm,
    ciphertext: bytes,
    chunk_size: int,
) -> bytes:
    """KMS's own layout: indefinite lengths down to a constructed [0] run of chunks."""
    chunks = b"".join(
        core.OctetString(ciphertext[i : i + chunk_size]).dump()
        for i in range(0, len(ciphertext), chunk_size)
    )
    content_info = _indefinite(
        b"\x30",
        core.ObjectIdentifier(OID_DATA).dump() + cipher_alg.dump() + _indefinite(b"\xa0", chunks),
    )
    enveloped = _indefinite(b"\x30", core.Integer(2).dump() + recipients.dump() + content_info)
    return _indefinite(
        b"\x30", core.ObjectIdentifier(OID_ENVELOPED_DATA).dump() + _indefinite(b"\xa0", enveloped)
    )
