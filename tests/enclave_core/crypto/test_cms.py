"""Tests for enclave_core.crypto.cms: KMS CiphertextForRecipient, opened and built.

Real crypto only: RSA keys from cryptography, envelopes re-assembled field by field with
asn1crypto for the negative cases, two answers captured from real AWS KMS, and the openssl
binary in both directions.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import algos, cms, core, parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_core.crypto.cms import (
    OID_SHA256,
    build_ciphertext_for_recipient,
    open_ciphertext_for_recipient,
    parse_ciphertext_for_recipient,
    subject_key_identifier,
)
from enclave_core.errors import CryptoError

PLAINTEXT = b"database password: correct horse battery staple"

# A real KMS answer and the RSA-2048 key it was made for: the published test vector of
# enclaver-io/enclaver (enclaver/src/proxy/pkcs7.rs, Apache-2.0). It decrypts to "Hello, World".
ENCLAVER_KMS_ANSWER = (
    "MIAGCSqGSIb3DQEHA6CAMIACAQIxggFrMIIBZwIBAoAg+wnprylA3c8NK79jWMmDr0b8X9ztvKJR1UzqtNBpzYkwPAYJ"
    "KoZIhvcNAQEHMC+gDzANBglghkgBZQMEAgEFAKEcMBoGCSqGSIb3DQEBCDANBglghkgBZQMEAgEFAASCAQBtKYAuknZa"
    "Rt5SOgmPmzvmelJ/gFx6tetIhN9u5FSOVzGBkF5jSqVDABxBybusmdi1y4OQ+HAr1A6nKyVSzjq2nCPqF1qEIduJlxXD"
    "DQkP+E7f1+9AVCr/mUDvc+5ZzFWGcfH9hHGDhLM3qrKMIVEx97593kXwOXDBNY9jQ52Yx4pCK4PHxLRK0mPuA9y48wr3"
    "AWj711tV4tHU3MJvnp3y3vB306OnH2mLfcuML5nOjgCEIQaaovkJkTMYmmN1GdwvG/Pilhc7JLJAVKSPiCRa2UuVa8S9"
    "cU50nxYidMi6cKSY6WzHN2unalWgIRb3J43VDH0A5jQgSejCFCY1YkPpMIAGCSqGSIb3DQEHATAdBglghkgBZQMEASoE"
    "ECwv8RFq5vhXP9WP1E+YBiSggAQQJjqXtzpe8K1dsCdK+fwpDAAAAAAAAAAAAAA="
)
ENCLAVER_KMS_KEY = (
    "MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQC+4nqOJ4xmYtE0rdCY4YwvA/bH15xdpYoC2SoMlryt"
    "OhUK77awbfJKwlwiXxaKoaJOOaV+neci8BRis0/8mKr7VoX7GG5E4lVj/8nl8LBeq5DAZUlasyJpQ1+1k3zU2vWYJDQx"
    "U/6tDp63opYZx3QZqEHjHYIA+N0xOexTfMAbWRntZU8M2ZNpxxkdYLbQRRprpMvt6aH8PvkFY1iFKJJJQ7Onkl8P664K"
    "JvZcPyJRrbk2ORXYZVcuowT2nPTXaEAutlCx6mTyzsrz/Pq8k4RQtQlBfw0+ocMwmfHxeXIstAr/bY8vXgOi/071cFF9"
    "kVMQFjud6gs4sJ0QmXdqrphHAgMBAAECggEAODR1g5/vfkJAeXNohWt8HGfdZTB+UTCp93a8I+LKgXMluQemUkK9Yffi"
    "qxg2ifFX2hKtQR/7a9UnG3zS43yMc98hKjMiXNQL8prhdvws4mNABvaL59HxIu98oflge0hRok+espuZ1JkGcOnFqqeI"
    "7vkVFWud2O1uK81zYY3M/v/1uXXiYBkM2q40FJKuL1IhtV6SUsjn0qmam+Wt3dQOpXkJ7bjBJaXYR4IMiDmL0woWZabQ"
    "aOuOc1ck77bPmY1ft2y654zF0aKHMo1h4+hGBsch1/GlBqxWDyA5+HUUwePqCNK0C8DBgnsCfxGZ/k5/tasbt57jWkjI"
    "YYnmYdUoAQKBgQDwRNLGYRDrP5PiIQoluuNv72ndGn/npSW5dBuyezs5Clh0ewYqZHkeBucyqgciQhsl5YofmNe4VkW2"
    "ychtijzLho7IUgF0fB5adfUJUr4qQ+dDN1NbzlTybXKn9AFUTbaQ/2yXyT7yAcY61y9JbGXc59RSpVYeO1k0ep+aqVFc"
    "AQKBgQDLYevU4t+HVZSDWXvtiVMqXakxe/wnQyq+M3hQA2awc5O8ov5WafOr1zojlNiZ/s4b3meWnW0SxH813B8N8x5O"
    "IlgwbbYO4LxJ2LLVcbYfrXTrvdfWUJa5xAMSGnSVwlN03pN+mmSseJTUJaD4/20aYPJi/CALfJBFuyGYke4URwKBgFiR"
    "JhkWYsQ09XBfuXva/keeuylTwV5EVDmegS8zmcsW8zBMwSMTUkotRUA5yNNqBtPbXyTylGJQ+vW8P/ORB4QGn89b20lz"
    "D0VNQfwj0hGGYlM2q7Wlw05x5dffbDYFR4z/eqog9uECom3CMJ4iJRJfKrckVzBhtCpSIU9DpsgBAoGBAKAzI3Xutq99"
    "Q5wq0ikKsE2AtRLbXIT4rSRgmnY8F5kJkOdXZAthLaS/xXXderfiMytUhjfnDNFpoeIk3vk39TkKaHjNEkip0OZCIKts"
    "BE7zbFN8mBSiKfdtZBXQbODBzscRwxBIQOBxoplwgllfqOrMTmCVxBAIMAQdIJty5xtlAoGBAM9+8qkG1g9nZO4fYxXo"
    "4VnlV25W7Ki+PNFAqCO/73JfBqvlVDn8o9xXZmEWbb3L+WVm5KDFjBmHblf9v2jIIzBcCfCv6hZssdGPGDXMDPB45pw2"
    "HYJHGxyBK5T8jr+ja9zcu2IyD11u3a/LBn9GUBYkWlVgulDg28KBqahr9r04"
)
# Another real KMS answer (RustCrypto/formats issue #779, kms_ciphertext_for_recipient_1.ber);
# its private key is not published, so it is parsed but not opened.
RUSTCRYPTO_KMS_ANSWER = (
    "MIAGCSqGSIb3DQEHA6CAMIACAQIxggFrMIIBZwIBAoAgcQ0zX-yOdGR8CYwov05XCbHVlfydT4HojTIC6-f7aZcwPAYJ"
    "KoZIhvcNAQEHMC-gDzANBglghkgBZQMEAgEFAKEcMBoGCSqGSIb3DQEBCDANBglghkgBZQMEAgEFAASCAQApz_6xMi9P"
    "grgYx6rvL-IP5U3G3b914l3A6Z3dxV72IoZN7bi5ILgBHJND5x1WzLCKuiLcNboY3v776NaZcCcXpD_Gtn-0X7BECFTd"
    "DkO58xKEP-24A9F8YUp2Aa6WDPR6Sf3-KAmaSy9aIiwgqLjT_gQTjYBP9AfRUtpiCZCxLTbARkTt0sArPiRef9-ltIxX"
    "KptWfbT8pOacD8orrQVZ433UajAtGOOTiAVAt8PcCBNLpCEisamJoSyPhW5peAkuulELN9bCr-2cvl62-cUsZOoPElV8"
    "kIc9b2eCnf15MD38oyX-j99xwCfZB4bpSo9cAuTftyD0kH3tva3ZIhEDMIAGCSqGSIb3DQEHATAdBglghkgBZQMEASoE"
    "EDc0PfFHDfYl7rb0v9LxrMOggAQQzHSt9l2XPItyzVHhuSfw8AAAAAAAAAAAAAA="
)

OAEP_SHA256 = {
    "hash_algorithm": {"algorithm": "sha256"},
    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
}
_DEFAULT = object()


@cache
def _key(name: str = "enclave") -> rsa.RSAPrivateKey:
    """One RSA-2048 key per name for the whole module (key generation is the slow part)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _aes_cbc(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def _oaep(hash_algorithm: hashes.HashAlgorithm | None = None) -> asym_padding.OAEP:
    algorithm = hash_algorithm or hashes.SHA256()
    return asym_padding.OAEP(mgf=asym_padding.MGF1(algorithm), algorithm=algorithm, label=None)


def _tlv(identifier: int, body: bytes) -> bytes:
    """A DER element, for the few shapes asn1crypto refuses to build."""
    if len(body) < 0x80:
        return bytes([identifier, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([identifier, 0x80 | len(size)]) + size + body


def _envelope(public_key: rsa.RSAPublicKey, plaintext: bytes = PLAINTEXT, **changes: Any) -> bytes:
    """Assemble a DER CiphertextForRecipient field by field; ``changes`` replaces any field."""
    content_key = changes.pop("content_key", os.urandom(32))
    iv = changes.pop("iv", os.urandom(16))
    ktri = cms.KeyTransRecipientInfo(
        {
            "version": changes.pop("ktri_version", "v2"),
            "rid": changes.pop(
                "rid",
                cms.RecipientIdentifier(
                    name="subject_key_identifier", value=subject_key_identifier(public_key)
                ),
            ),
            "key_encryption_algorithm": changes.pop(
                "key_encryption_algorithm", {"algorithm": "rsaes_oaep", "parameters": OAEP_SHA256}
            ),
            "encrypted_key": changes.pop("encrypted_key", public_key.encrypt(content_key, _oaep())),
        }
    )
    recipients = changes.pop("recipients", [cms.RecipientInfo(name="ktri", value=ktri)])
    encrypted_content_info: dict[str, Any] = {
        "content_type": changes.pop("encrypted_content_type", "data"),
        "content_encryption_algorithm": changes.pop(
            "content_encryption_algorithm", {"algorithm": "aes256_cbc", "parameters": iv}
        ),
    }
    encrypted = changes.pop("encrypted_content", _DEFAULT)
    if encrypted is _DEFAULT:
        encrypted = _aes_cbc(content_key, iv, plaintext)
    if encrypted is not None:
        encrypted_content_info["encrypted_content"] = encrypted
    enveloped: dict[str, Any] = {
        "version": changes.pop("version", "v2"),
        "recipient_infos": recipients,
        "encrypted_content_info": encrypted_content_info,
    }
    for optional in ("originator_info", "unprotected_attrs"):
        if optional in changes:
            enveloped[optional] = changes.pop(optional)
    assert not changes, f"unknown fields {sorted(changes)}"
    return cms.ContentInfo(
        {"content_type": "enveloped_data", "content": cms.EnvelopedData(enveloped)}
    ).dump()


def _open(data: bytes, key: rsa.RSAPrivateKey | None = None) -> bytes:
    return open_ciphertext_for_recipient(data, key or _key())


def _refused(data: bytes, match: str, key: rsa.RSAPrivateKey | None = None) -> CryptoError:
    with pytest.raises(CryptoError, match=match) as caught:
        _open(data, key)
    return caught.value


def _shape(data: bytes, depth: int = 0) -> list[tuple[int, bytes, bytes]]:
    """Every TLV as (depth, header, value of INTEGER/NULL/OID), walking constructed values."""
    shape: list[tuple[int, bytes, bytes]] = []
    pointer = 0
    while pointer < len(data):
        class_, method, tag, header, contents, trailer = parser.parse(data[pointer:])
        fixed = contents if class_ == 0 and tag in (2, 5, 6) else b""
        shape.append((depth, header, fixed))
        if method == 1:
            shape.extend(_shape(contents, depth + 1))
        pointer += len(header) + len(contents) + len(trailer)
    return shape


# --- subject key identifier --------------------------------------------------------------------


def test_subject_key_identifier_is_sha256_of_the_der_spki() -> None:
    public_key = _key().public_key()
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert subject_key_identifier(public_key) == hashlib.sha256(spki).digest()
    assert subject_key_identifier(spki) == hashlib.sha256(spki).digest()
    assert subject_key_identifier(_key("other").public_key()) != subject_key_identifier(spki)


def test_subject_key_identifier_matches_what_real_kms_sends() -> None:
    key = serialization.load_der_private_key(base64.b64decode(ENCLAVER_KMS_KEY), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    answer = parse_ciphertext_for_recipient(base64.b64decode(ENCLAVER_KMS_ANSWER))
    assert answer.subject_key_identifier == subject_key_identifier(key.public_key())
    assert len(answer.subject_key_identifier) == 32


@pytest.mark.parametrize("bad", [b"", b"not a key", b"\x30\x03\x02\x01\x01"])
def test_subject_key_identifier_refuses_what_is_not_an_spki(bad: bytes) -> None:
    with pytest.raises(CryptoError, match="SubjectPublicKeyInfo"):
        subject_key_identifier(bad)


def test_subject_key_identifier_refuses_non_rsa_keys() -> None:
    spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(CryptoError, match="not an RSA key"):
        subject_key_identifier(spki)


# --- real KMS answers ---------------------------------------------------------------------------


def test_opens_a_real_kms_answer() -> None:
    key = serialization.load_der_private_key(base64.b64decode(ENCLAVER_KMS_KEY), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert _open(base64.b64decode(ENCLAVER_KMS_ANSWER), key) == b"Hello, World"


def test_parses_another_real_kms_answer_and_refuses_it_for_our_key() -> None:
    data = base64.urlsafe_b64decode(RUSTCRYPTO_KMS_ANSWER)
    answer = parse_ciphertext_for_recipient(data)
    assert answer.subject_key_identifier.hex().startswith("710d335fec8e7464")
    assert answer.iv == bytes.fromhex("37343df1470df625eeb6f4bfd2f1acc3")
    assert answer.encrypted_content == bytes.fromhex("cc74adf65d973c8b72cd51e1b927f0f0")
    assert len(answer.encrypted_key) == 256
    _refused(data, "subjectKeyIdentifier does not match")


def test_ber_output_has_exactly_the_layout_of_a_real_kms_answer() -> None:
    real = base64.b64decode(ENCLAVER_KMS_ANSWER)
    ours = build_ciphertext_for_recipient(
        b"Hello, World", _key().public_key(), indefinite_length=True
    )
    assert len(ours) == len(real)
    assert _shape(ours) == _shape(real)


# --- round trips --------------------------------------------------------------------------------

SIZES = [0, 1, 15, 16, 17, 32, 4096, 100000]


@pytest.mark.parametrize("indefinite", [False, True], ids=["der", "ber"])
@pytest.mark.parametrize("size", SIZES)
def test_round_trip(size: int, indefinite: bool) -> None:
    plaintext = os.urandom(size)
    envelope = build_ciphertext_for_recipient(
        plaintext, _key().public_key(), indefinite_length=indefinite
    )
    assert _open(envelope) == plaintext
    # DER starts with a definite length, BER (KMS's layout) with the indefinite marker 0x80.
    assert (envelope[1] == 0x80) is indefinite
    if not indefinite:
        assert cms.ContentInfo.load(envelope, strict=True).dump(force=True) == envelope


def test_ber_output_chunks_the_content_like_kms() -> None:
    envelope = build_ciphertext_for_recipient(
        os.urandom(4096), _key().public_key(), indefinite_length=True, chunk_size=1000
    )
    content = cms.ContentInfo.load(envelope)["content"]["encrypted_content_info"]
    chunks = _chunk_values(content["encrypted_content"])
    assert [len(chunk) for chunk in chunks] == [1000, 1000, 1000, 1000, 112]  # 4096 + padding


def _chunk_values(encrypted_content: core.OctetString) -> list[bytes]:
    values, raw, pointer = [], encrypted_content.contents, 0
    while pointer < len(raw):
        _, _, tag, header, contents, _ = parser.parse(raw[pointer:])
        assert tag == 4
        values.append(contents)
        pointer += len(header) + len(contents)
    return values


def test_public_key_may_be_given_as_der_spki() -> None:
    spki = (
        _key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert _open(build_ciphertext_for_recipient(PLAINTEXT, spki)) == PLAINTEXT


def test_each_envelope_uses_a_fresh_content_key_and_iv() -> None:
    public_key = _key().public_key()
    first = parse_ciphertext_for_recipient(build_ciphertext_for_recipient(PLAINTEXT, public_key))
    second = parse_ciphertext_for_recipient(build_ciphertext_for_recipient(PLAINTEXT, public_key))
    assert first.iv != second.iv
    assert first.encrypted_content != second.encrypted_content


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plaintext=st.binary(max_size=300), indefinite=st.booleans(), chunk=st.integers(1, 64))
def test_round_trip_any_plaintext_and_chunking(
    plaintext: bytes, indefinite: bool, chunk: int
) -> None:
    envelope = build_ciphertext_for_recipient(
        plaintext, _key().public_key(), indefinite_length=indefinite, chunk_size=chunk
    )
    assert _open(envelope) == plaintext


@pytest.mark.parametrize("bad", ["ec", "rsa1024", "garbage"])
def test_build_refuses_unsuitable_recipient_keys(bad: str) -> None:
    keys: dict[str, Any] = {
        "ec": ec.generate_private_key(ec.SECP384R1()).public_key(),
        "rsa1024": rsa.generate_private_key(65537, 1024).public_key(),  # noqa: S505 (refused)
        "garbage": b"\x04\x00",
    }
    with pytest.raises(CryptoError, match="recipient"):
        build_ciphertext_for_recipient(PLAINTEXT, keys[bad])


def test_build_refuses_a_zero_chunk_size() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        build_ciphertext_for_recipient(
            PLAINTEXT, _key().public_key(), indefinite_length=True, chunk_size=0
        )


# --- strict checks ------------------------------------------------------------------------------


def test_the_test_assembler_makes_valid_envelopes() -> None:
    # Every negative test below changes one field of this envelope.
    assert _open(_envelope(_key().public_key())) == PLAINTEXT


def test_refuses_another_content_type() -> None:
    data = cms.ContentInfo({"content_type": "data", "content": b"hello"}).dump()
    _refused(data, r"content type is 1\.2\.840\.113549\.1\.7\.1, expected id-envelopedData")


@pytest.mark.parametrize("version", ["v0", "v3"])
def test_refuses_other_enveloped_data_versions(version: str) -> None:
    _refused(_envelope(_key().public_key(), version=version), "EnvelopedData version is not 2")


def test_refuses_two_recipients() -> None:
    public_key = _key().public_key()
    ktri = cms.KeyTransRecipientInfo(
        {
            "version": "v2",
            "rid": cms.RecipientIdentifier(
                name="subject_key_identifier", value=subject_key_identifier(public_key)
            ),
            "key_encryption_algorithm": {"algorithm": "rsaes_oaep", "parameters": OAEP_SHA256},
            "encrypted_key": public_key.encrypt(os.urandom(32), _oaep()),
        }
    )
    recipients = [cms.RecipientInfo(name="ktri", value=ktri)] * 2
    _refused(_envelope(public_key, recipients=recipients), "exactly one recipient, found 2")


def test_refuses_a_non_key_transport_recipient() -> None:
    kekri = cms.KEKRecipientInfo(
        {
            "version": "v4",
            "kekid": {"key_identifier": b"kek"},
            "key_encryption_algorithm": {"algorithm": "aes256_wrap"},
            "encrypted_key": os.urandom(40),
        }
    )
    recipients = [cms.RecipientInfo(name="kekri", value=kekri)]
    _refused(_envelope(_key().public_key(), recipients=recipients), "not KeyTransRecipientInfo")


def test_refuses_key_trans_recipient_version_0() -> None:
    _refused(_envelope(_key().public_key(), ktri_version="v0"), "KeyTransRecipientInfo version")


def test_refuses_an_issuer_and_serial_number_recipient() -> None:
    issuer = asn1_x509.Name.build({"common_name": "enclave"})
    rid = cms.RecipientIdentifier(
        name="issuer_and_serial_number", value={"issuer": issuer, "serial_number": 7}
    )
    _refused(_envelope(_key().public_key(), rid=rid), "issuer_and_serial_number")


def test_refuses_the_rfc5280_sha1_key_identifier() -> None:
    public_key = _key().public_key()
    sha1_ski = x509.SubjectKeyIdentifier.from_public_key(public_key).digest
    rid = cms.RecipientIdentifier(name="subject_key_identifier", value=sha1_ski)
    _refused(_envelope(public_key, rid=rid), "subjectKeyIdentifier does not match")


def test_refuses_an_answer_made_for_another_key() -> None:
    data = build_ciphertext_for_recipient(PLAINTEXT, _key("other").public_key())
    _refused(data, "subjectKeyIdentifier does not match")


def test_refuses_pkcs1_v15_key_transport() -> None:
    algorithm = {"algorithm": "rsaes_pkcs1v15"}
    _refused(
        _envelope(_key().public_key(), key_encryption_algorithm=algorithm),
        r"key encryption algorithm is 1\.2\.840\.113549\.1\.1\.1, expected RSAES-OAEP",
    )


def test_refuses_oaep_without_parameters() -> None:
    algorithm = {"algorithm": "rsaes_oaep"}
    _refused(
        _envelope(_key().public_key(), key_encryption_algorithm=algorithm), "parameters are absent"
    )


@pytest.mark.parametrize("digest", ["sha1", "sha384", "sha512", "sha224"])
def test_refuses_oaep_with_another_hash(digest: str) -> None:
    params = {
        "hash_algorithm": {"algorithm": digest},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
    }
    algorithm = {"algorithm": "rsaes_oaep", "parameters": params}
    _refused(
        _envelope(_key().public_key(), key_encryption_algorithm=algorithm),
        "RSAES-OAEP hash is .*, expected sha256",
    )


def test_refuses_oaep_with_default_hashes_spelled_out_as_empty_sequence() -> None:
    algorithm = {"algorithm": "rsaes_oaep", "parameters": algos.RSAESOAEPParams.load(b"\x30\x00")}
    _refused(
        _envelope(_key().public_key(), key_encryption_algorithm=algorithm),
        r"RSAES-OAEP hash is 1\.3\.14\.3\.2\.26",
    )


@pytest.mark.parametrize("digest", ["sha1", "sha512"])
def test_refuses_oaep_with_another_mgf1_hash(digest: str) -> None:
    params = {
        "hash_algorithm": {"algorithm": "sha256"},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": digest}},
    }
    algorithm = {"algorithm": "rsaes_oaep", "parameters": params}
    _refused(
        _envelope(_key().public_key(), key_encryption_algorithm=algorithm),
        "RSAES-OAEP MGF1 hash is",
    )


def test_refuses_an_oaep_label() -> None:
    params = dict(
        OAEP_SHA256, p_source_algorithm={"algorithm": "p_specified", "parameters": b"label"}
    )
    algorithm = {"algorithm": "rsaes_oaep", "parameters": params}
    _refused(_envelope(_key().public_key(), key_encryption_algorithm=algorithm), "label")


def test_refuses_sha256_with_parameters() -> None:
    sha256 = core.ObjectIdentifier(OID_SHA256).dump()
    mgf1 = algos.MaskGenAlgorithm({"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}})
    weird_hash = _tlv(0x30, sha256 + core.OctetString(b"x").dump())
    params_der = _tlv(0x30, _tlv(0xA0, weird_hash) + _tlv(0xA1, mgf1.dump()))
    params = algos.RSAESOAEPParams.load(params_der)
    algorithm = {"algorithm": "rsaes_oaep", "parameters": params}
    # sha256 takes absent or NULL parameters only; asn1crypto refuses anything else.
    _refused(_envelope(_key().public_key(), key_encryption_algorithm=algorithm), "malformed")


def test_refuses_encrypted_content_that_is_not_data() -> None:
    _refused(_envelope(_key().public_key(), encrypted_content_type="signed_data"), "not id-data")


def test_refuses_aes128_cbc() -> None:
    algorithm = {"algorithm": "aes128_cbc", "parameters": os.urandom(16)}
    _refused(
        _envelope(_key().public_key(), content_encryption_algorithm=algorithm),
        r"2\.16\.840\.1\.101\.3\.4\.1\.2, expected aes256-CBC",
    )


@pytest.mark.parametrize("size", [0, 8, 15, 17, 32])
def test_refuses_an_iv_that_is_not_16_bytes(size: int) -> None:
    algorithm = {"algorithm": "aes256_cbc", "parameters": os.urandom(size)}
    _refused(
        _envelope(_key().public_key(), content_encryption_algorithm=algorithm), "IV is not 16 bytes"
    )


def test_refuses_absent_encrypted_content() -> None:
    _refused(_envelope(_key().public_key(), encrypted_content=None), "encryptedContent is absent")


@pytest.mark.parametrize("size", [0, 15, 33])
def test_refuses_content_that_is_not_whole_aes_blocks(size: int) -> None:
    _refused(
        _envelope(_key().public_key(), encrypted_content=os.urandom(size)),
        "whole number of AES blocks",
    )


def test_refuses_a_content_key_that_is_not_32_bytes() -> None:
    _refused(
        _envelope(_key().public_key(), content_key=os.urandom(16)), "content key is not 32 bytes"
    )


def test_refuses_a_wrapped_key_that_does_not_unwrap() -> None:
    _refused(_envelope(_key().public_key(), encrypted_key=os.urandom(256)), "RSA-OAEP unwrap")


def test_refuses_a_key_wrapped_with_sha1_oaep_under_sha256_labels() -> None:
    public_key = _key().public_key()
    wrapped = public_key.encrypt(os.urandom(32), _oaep(hashes.SHA1()))  # noqa: S303 (refused)
    _refused(_envelope(public_key, encrypted_key=wrapped), "RSA-OAEP unwrap")


def test_refuses_originator_info_and_unprotected_attributes() -> None:
    public_key = _key().public_key()
    originator = cms.OriginatorInfo({"certs": cms.CertificateSet([])})
    attrs = cms.CMSAttributes([{"type": "content_type", "values": ["data"]}])
    _refused(_envelope(public_key, originator_info=originator), "unexpected originatorInfo")
    _refused(_envelope(public_key, unprotected_attrs=attrs), "unexpected unprotectedAttrs")


def test_bad_padding_is_refused_without_leaking_key_or_plaintext() -> None:
    content_key, iv = os.urandom(32), os.urandom(16)
    # Flipping the IV's last byte flips the padding byte of a one-block plaintext: 0x0a -> 0xf5.
    tampered_iv = iv[:-1] + bytes([iv[-1] ^ 0xFF])
    encrypted = _aes_cbc(content_key, iv, b"secret")
    error = _refused(
        _envelope(
            _key().public_key(),
            content_key=content_key,
            iv=tampered_iv,
            encrypted_content=encrypted,
        ),
        "bad PKCS#7 padding",
    )
    message = str(error)
    for leak in (content_key, content_key.hex(), b"secret", "secret", iv.hex()):
        assert (leak.hex() if isinstance(leak, bytes) else leak) not in message


def test_flipped_ciphertext_byte_is_refused() -> None:
    envelope = build_ciphertext_for_recipient(b"x" * 20, _key().public_key())  # two blocks
    answer = parse_ciphertext_for_recipient(envelope)
    # The last byte of the first block XORs into the second block's padding byte.
    where = envelope.index(answer.encrypted_content) + 15
    tampered = envelope[:where] + bytes([envelope[where] ^ 0xFF]) + envelope[where + 1 :]
    _refused(tampered, "bad PKCS#7 padding")


@pytest.mark.parametrize("indefinite", [False, True], ids=["der", "ber"])
@pytest.mark.parametrize("extra", [b"\x00", b"\x00\x00", b"junk"])
def test_refuses_trailing_bytes(indefinite: bool, extra: bytes) -> None:
    envelope = build_ciphertext_for_recipient(
        PLAINTEXT, _key().public_key(), indefinite_length=indefinite
    )
    _refused(envelope + extra, "trailing bytes after the ContentInfo")


@pytest.mark.parametrize("indefinite", [False, True], ids=["der", "ber"])
def test_refuses_truncated_input(indefinite: bool) -> None:
    envelope = build_ciphertext_for_recipient(
        PLAINTEXT, _key().public_key(), indefinite_length=indefinite
    )
    for cut in (1, 2, 10, len(envelope) // 2, len(envelope) - 2, len(envelope) - 1):
        _refused(envelope[:cut], "malformed or truncated")


def test_refuses_definite_length_constructed_content() -> None:
    # BER allows it, KMS never sends it, and asn1crypto cannot read it: refused cleanly.
    envelope = build_ciphertext_for_recipient(
        PLAINTEXT, _key().public_key(), indefinite_length=True
    )
    answer = parse_ciphertext_for_recipient(envelope)
    chunk = core.OctetString(answer.encrypted_content).dump()
    before, _, _ = envelope.partition(b"\xa0\x80" + chunk)
    rebuilt = before + _tlv(0xA0, chunk) + b"\x00\x00" * 4
    _refused(rebuilt, "malformed")


@pytest.mark.parametrize("data", [b"", "not bytes"])
def test_refuses_empty_or_non_bytes_input(data: Any) -> None:
    _refused(data, "empty|must be bytes")


def test_refuses_oversized_input() -> None:
    _refused(b"\x30" * ((1 << 20) + 1), "larger than")


def test_open_needs_an_rsa_private_key() -> None:
    envelope = build_ciphertext_for_recipient(PLAINTEXT, _key().public_key())
    with pytest.raises(CryptoError, match="RSA private key"):
        open_ciphertext_for_recipient(envelope, ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]


# --- hostile input: nothing but CryptoError may come out ----------------------------------------


@cache
def _valid(shape: str) -> tuple[bytes, int, int]:
    """A valid envelope and the span [IV start, content end) where CBC is malleable."""
    envelope = build_ciphertext_for_recipient(
        b"m" * 40, _key().public_key(), indefinite_length=shape == "ber", chunk_size=16
    )
    answer = parse_ciphertext_for_recipient(envelope)
    end = len(envelope) - (10 if shape == "ber" else 0)  # BER ends with five end-of-contents
    return envelope, envelope.index(answer.iv), end


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(max_size=700))
def test_random_bytes_raise_only_crypto_error(data: bytes) -> None:
    with pytest.raises(CryptoError):
        _open(data)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(shape=st.sampled_from(["der", "ber"]), data=st.data())
def test_single_byte_mutations_raise_only_crypto_error(shape: str, data: st.DataObject) -> None:
    envelope, malleable_start, malleable_end = _valid(shape)
    index = data.draw(st.integers(0, len(envelope) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda byte: byte != envelope[index]))
    mutated = envelope[:index] + bytes([value]) + envelope[index + 1 :]
    try:
        _open(mutated)
    except CryptoError:
        return
    # CMS EnvelopedData is not authenticated: only a change to the IV or the AES-CBC
    # ciphertext may still decrypt (to different bytes). Anything else must be refused.
    assert malleable_start <= index < malleable_end


# --- interoperability with openssl --------------------------------------------------------------


@pytest.fixture(scope="module")
def openssl() -> str:
    path = shutil.which("openssl")
    assert path, "these tests need the openssl binary (apt-get install -y openssl)"
    return path


def _run(*args: str) -> bytes:
    done = subprocess.run(list(args), check=True, capture_output=True, timeout=60)
    return done.stdout


def _write_identity(folder: Path, key: rsa.RSAPrivateKey, ski: bytes) -> tuple[Path, Path]:
    """Write key.pem and a self-signed cert.pem whose SubjectKeyIdentifier extension is ``ski``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave recipient")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.mark.parametrize("indefinite", [False, True], ids=["der", "ber"])
def test_openssl_prints_our_envelope(openssl: str, tmp_path: Path, indefinite: bool) -> None:
    envelope_path = tmp_path / "envelope.p7m"
    envelope_path.write_bytes(
        build_ciphertext_for_recipient(PLAINTEXT, _key().public_key(), indefinite_length=indefinite)
    )
    printed = _run(
        openssl, "cms", "-cmsout", "-print", "-inform", "DER", "-in", str(envelope_path)
    ).decode()
    for expected in (
        "pkcs7-envelopedData",
        "d.subjectKeyIdentifier",
        "rsaesOaep",
        "mgf1",
        "sha256",
        "aes-256-cbc",
        "pkcs7-data",
    ):
        assert expected in printed
    ski = subject_key_identifier(_key().public_key())
    assert " ".join(f"{byte:02x}" for byte in ski[:8]) in printed


@pytest.mark.parametrize("indefinite", [False, True], ids=["der", "ber"])
def test_openssl_decrypts_our_envelope(openssl: str, tmp_path: Path, indefinite: bool) -> None:
    key = _key()
    key_path, cert_path = _write_identity(tmp_path, key, subject_key_identifier(key.public_key()))
    plaintext = os.urandom(3000)
    envelope_path = tmp_path / "envelope.p7m"
    envelope_path.write_bytes(
        build_ciphertext_for_recipient(plaintext, key.public_key(), indefinite_length=indefinite)
    )
    # -recip makes openssl match the recipient by the certificate's key identifier.
    out = _run(
        openssl,
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-in",
        str(envelope_path),
        "-inkey",
        str(key_path),
        "-recip",
        str(cert_path),
        "-binary",
    )
    assert out == plaintext


def _openssl_encrypt(
    openssl: str, folder: Path, cert_path: Path, plaintext: bytes, *options: str
) -> bytes:
    plain_path = folder / "plain.bin"
    plain_path.write_bytes(plaintext)
    return _run(
        openssl,
        "cms",
        "-encrypt",
        "-keyid",
        "-recip",
        str(cert_path),
        "-binary",
        "-outform",
        "DER",
        "-in",
        str(plain_path),
        *options,
    )


OPENSSL_KMS_LIKE = (
    "-aes256",
    "-keyopt",
    "rsa_padding_mode:oaep",
    "-keyopt",
    "rsa_oaep_md:sha256",
    "-keyopt",
    "rsa_mgf1_md:sha256",
)


@pytest.mark.parametrize("stream", [False, True], ids=["der", "ber-stream"])
def test_opens_an_openssl_envelope(openssl: str, tmp_path: Path, stream: bool) -> None:
    key = _key()
    _, cert_path = _write_identity(tmp_path, key, subject_key_identifier(key.public_key()))
    plaintext = os.urandom(5000)
    options = OPENSSL_KMS_LIKE + (("-stream",) if stream else ())
    envelope = _openssl_encrypt(openssl, tmp_path, cert_path, plaintext, *options)
    assert (envelope[1] == 0x80) is stream  # -stream really gives indefinite-length BER
    assert _open(envelope, key) == plaintext


def test_refuses_an_openssl_envelope_keyed_by_the_rfc5280_identifier(
    openssl: str, tmp_path: Path
) -> None:
    key = _key()
    sha1_ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    _, cert_path = _write_identity(tmp_path, key, sha1_ski)
    envelope = _openssl_encrypt(openssl, tmp_path, cert_path, PLAINTEXT, *OPENSSL_KMS_LIKE)
    _refused(envelope, "subjectKeyIdentifier does not match", key)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (("-aes256", "-keyopt", "rsa_padding_mode:oaep"), r"RSAES-OAEP (hash|parameters)"),
        (
            (
                "-aes256",
                "-keyopt",
                "rsa_padding_mode:oaep",
                "-keyopt",
                "rsa_oaep_md:sha256",
                "-keyopt",
                "rsa_mgf1_md:sha1",
            ),
            "MGF1 hash",
        ),
        (("-aes256",), "expected RSAES-OAEP"),
        (OPENSSL_KMS_LIKE[1:] + ("-aes128",), "expected aes256-CBC"),
    ],
    ids=["oaep-sha1", "mgf1-sha1", "pkcs1v15", "aes128"],
)
def test_refuses_openssl_envelopes_with_other_algorithms(
    openssl: str, tmp_path: Path, options: tuple[str, ...], match: str
) -> None:
    key = _key()
    _, cert_path = _write_identity(tmp_path, key, subject_key_identifier(key.public_key()))
    envelope = _openssl_encrypt(openssl, tmp_path, cert_path, PLAINTEXT, *options)
    _refused(envelope, match, key)
