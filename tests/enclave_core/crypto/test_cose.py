"""Tests for enclave_core.crypto.cose: building, strict parsing and signature checks.

Real hardware documents are the project's own copies under ``tests/data/nitro/``.
"""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_core.crypto import cose
from enclave_core.crypto.devca import DevCa
from enclave_core.errors import AttestationError
from tests.vectors import NITRO as TESTDATA

NITRITE = TESTDATA / "nitrite-2024-09-07.cbor"


def _fields(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
        "timestamp_ms": 1_725_719_859_545,
        "pcrs": {i: bytes([i]) * 48 for i in range(16)},
        "certificate": b"\x30" * 600,
        "cabundle": [b"\x30" * 500, b"\x30" * 700, b"\x30" * 790, b"\x30" * 650],
        "public_key": None,
        "user_data": b"hello",
        "nonce": bytes(range(32)),
    }
    fields.update(overrides)
    return fields


def _sign(
    payload_fields: dict[str, object] | None = None,
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    payload = cose.build_document(**(payload_fields or _fields()))  # type: ignore[arg-type]
    return cose.sign1(payload, key), key


def _raw_payload(**overrides: object) -> bytes:
    """A valid payload map re-encoded with some entries changed (None deletes one)."""
    doc = cbor2.loads(cose.build_document(**_fields()))  # type: ignore[arg-type]
    for key, value in overrides.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return cbor2.dumps(doc)


# ------------------------------------------------------------------ real hardware documents


def test_nitrite_document_decodes_and_its_signature_verifies() -> None:
    data = NITRITE.read_bytes()
    envelope = cose.decode_sign1(data)
    document = cose.decode_document(envelope.payload)
    assert envelope.protected == cose.PROTECTED_ES384
    assert document["module_id"] == "i-0a22e5c5f24d22174-enc0191cceb4289903f"
    assert document["timestamp"] == 1725719859545
    assert sorted(document["pcrs"]) == list(range(16))
    leaf = x509.load_der_x509_certificate(document["certificate"])
    cose.verify_signature(data, leaf.public_key())  # type: ignore[arg-type]


def test_nitrite_document_fails_after_a_flipped_signature_byte() -> None:
    data = bytearray(NITRITE.read_bytes())
    document = cose.decode_document(cose.decode_sign1(bytes(data)).payload)
    leaf_key = x509.load_der_x509_certificate(document["certificate"]).public_key()
    data[-1] ^= 0x01  # the last byte belongs to the signature
    with pytest.raises(AttestationError, match="signature is invalid"):
        cose.verify_signature(bytes(data), leaf_key)  # type: ignore[arg-type]


def test_tagged_form_is_accepted_and_other_tags_are_not() -> None:
    data = NITRITE.read_bytes()
    items = cbor2.loads(data)
    tagged = cbor2.dumps(cbor2.CBORTag(18, items))
    assert tagged[0] == 0xD2 and data[0] == 0x84
    assert cose.decode_sign1(tagged).payload == cose.decode_sign1(data).payload
    leaf = cose.decode_document(cose.decode_sign1(data).payload)["certificate"]
    cose.verify_signature(tagged, x509.load_der_x509_certificate(leaf).public_key())  # type: ignore[arg-type]
    with pytest.raises(AttestationError, match="unexpected CBOR tag 98"):
        cose.decode_sign1(cbor2.dumps(cbor2.CBORTag(98, items)))


def test_generated_document_matches_the_hardware_structure(tmp_path: Path) -> None:
    """Same envelope form, protected header, key order and value types as real hardware."""
    real = NITRITE.read_bytes()
    leaf = DevCa(tmp_path).issue_leaf("i-0123456789abcdef0-enc0123456789abcdef")
    payload = cose.build_document(
        **_fields(certificate=leaf.certificate, cabundle=leaf.cabundle, public_key=None)  # type: ignore[arg-type]
    )
    ours = cose.sign1(payload, leaf.private_key)

    assert ours[0] == real[0] == 0x84  # untagged 4-element array
    assert ours[1:6] == real[1:6] == b"\x44" + cose.PROTECTED_ES384  # bstr(h'a1013822')
    assert ours[6] == real[6] == 0xA0  # empty unprotected map
    real_items, our_items = cbor2.loads(real), cbor2.loads(ours)
    assert len(our_items[3]) == len(real_items[3]) == 96
    real_doc, our_doc = cbor2.loads(real_items[2]), cbor2.loads(our_items[2])
    assert list(our_doc) == list(real_doc) == list(cose.DOCUMENT_KEYS)
    for key in ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"):
        assert type(our_doc[key]) is type(real_doc[key]), key
    assert our_doc["digest"] == real_doc["digest"] == "SHA384"
    assert list(our_doc["pcrs"]) == list(real_doc["pcrs"]) == list(range(16))
    assert {len(v) for v in our_doc["pcrs"].values()} == {48}
    assert len(our_doc["cabundle"]) == len(real_doc["cabundle"]) == 4
    assert our_doc["public_key"] is None  # absent optional fields are CBOR null, not omitted
    # timestamp as a uint with an 8-byte argument, as in the real payload
    assert b"itimestamp\x1b" in our_items[2] and b"itimestamp\x1b" in real_items[2]


# ------------------------------------------------------------------ build, sign, verify


def test_sign_and_verify_roundtrip_and_wrong_key_fails() -> None:
    signed, key = _sign()
    envelope = cose.decode_sign1(signed)
    assert cose.decode_document(envelope.payload)["user_data"] == b"hello"
    cose.verify_signature(signed, key.public_key())
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(AttestationError, match="signature is invalid"):
        cose.verify_signature(signed, other)


def test_flipped_payload_byte_fails_verification() -> None:
    signed, key = _sign()
    items = cbor2.loads(signed)
    payload = bytearray(items[2])
    payload[payload.index(b"hello")] ^= 0x20  # 'hello' -> 'Hello': still a valid document
    tampered = cbor2.dumps([items[0], items[1], bytes(payload), items[3]])
    assert cose.decode_document(cose.decode_sign1(tampered).payload)["user_data"] == b"Hello"
    with pytest.raises(AttestationError, match="signature is invalid"):
        cose.verify_signature(tampered, key.public_key())


def test_sign1_refuses_a_key_that_is_not_p384() -> None:
    payload = cose.build_document(**_fields())  # type: ignore[arg-type]
    with pytest.raises(AttestationError, match="P-384"):
        cose.sign1(payload, ec.generate_private_key(ec.SECP256R1()))


@settings(max_examples=25, deadline=None)
@given(
    user_data=st.one_of(st.none(), st.binary(max_size=1024)),
    nonce=st.one_of(st.none(), st.binary(max_size=1024)),
    public_key=st.one_of(st.none(), st.binary(max_size=1024)),
)
def test_optional_fields_roundtrip(
    user_data: bytes | None, nonce: bytes | None, public_key: bytes | None
) -> None:
    payload = cose.build_document(
        **_fields(user_data=user_data, nonce=nonce, public_key=public_key)  # type: ignore[arg-type]
    )
    document = cose.decode_document(payload)
    assert (document["user_data"], document["nonce"], document["public_key"]) == (
        user_data,
        nonce,
        public_key,
    )


# ------------------------------------------------------------------ strict envelope parsing


def test_trailing_bytes_are_refused() -> None:
    signed, _ = _sign()
    with pytest.raises(AttestationError, match="trailing"):
        cose.decode_sign1(signed + b"\x00")
    payload = cose.build_document(**_fields())  # type: ignore[arg-type]
    with pytest.raises(AttestationError, match="trailing"):
        cose.decode_document(payload + b"\xa0")


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        (b"", "invalid CBOR"),
        (cbor2.dumps([cose.PROTECTED_ES384, {}, b"x"]), "4 elements"),
        (cbor2.dumps({"a": 1}), "4 elements"),
        (cbor2.dumps([{1: -35}, {}, b"x", bytes(96)]), "protected header is not a byte string"),
        (cbor2.dumps([cose.PROTECTED_ES384, [], b"x", bytes(96)]), "unprotected header"),
        (cbor2.dumps([cose.PROTECTED_ES384, {}, "x", bytes(96)]), "payload"),
        (cbor2.dumps([cose.PROTECTED_ES384, {}, b"", bytes(96)]), "payload"),
        (cbor2.dumps([cose.PROTECTED_ES384, {}, b"x", bytes(95)]), "96-byte"),
        (cbor2.dumps([cbor2.dumps({1: -7}), {}, b"x", bytes(96)]), "ES384"),
        (cbor2.dumps([cose.PROTECTED_ES384, {1: -35}, b"x", bytes(96)]), "unprotected header"),
        (b"\x9f" + cose.PROTECTED_ES384 + b"\xff", "indefinite"),  # indefinite-length array
    ],
)
def test_malformed_envelopes_are_refused(envelope: bytes, message: str) -> None:
    with pytest.raises(AttestationError, match=message):
        cose.decode_sign1(envelope)


# ------------------------------------------------------------------ strict payload parsing


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"extra": 1}, "unknown key"),
        ({"module_id": None}, "missing mandatory"),
        ({"module_id": ""}, "module_id"),
        ({"digest": "MD5"}, "unsupported digest"),
        ({"timestamp": 0}, "timestamp"),
        ({"timestamp": "now"}, "timestamp"),
        ({"pcrs": {}}, "pcrs"),
        ({"pcrs": {0: bytes(32)}}, "PCR0 must be 48 bytes"),
        ({"pcrs": {32: bytes(48)}}, "invalid PCR index"),
        ({"certificate": b""}, "certificate"),
        ({"certificate": bytes(1025)}, "certificate"),
        ({"cabundle": []}, "cabundle"),
        ({"cabundle": [bytes(1025)]}, "cabundle"),
        ({"nonce": bytes(1025)}, "nonce"),
        ({"user_data": "text"}, "user_data"),
    ],
)
def test_malformed_documents_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(AttestationError, match=message):
        cose.decode_document(_raw_payload(**overrides))


def test_null_mandatory_field_and_duplicate_keys_are_refused() -> None:
    doc = cbor2.loads(cose.build_document(**_fields()))  # type: ignore[arg-type]
    doc["certificate"] = None
    with pytest.raises(AttestationError, match="missing mandatory"):
        cose.decode_document(cbor2.dumps(doc))
    # Two 'nonce' entries: hand-built map header claiming 10 pairs.
    good = cose.build_document(**_fields())  # type: ignore[arg-type]
    duplicated = b"\xaa" + good[1:] + cbor2.dumps("nonce") + cbor2.dumps(b"other")
    with pytest.raises(AttestationError, match="(?i)duplicate"):
        cose.decode_document(duplicated)


def test_build_document_refuses_what_decode_refuses() -> None:
    with pytest.raises(AttestationError, match="PCR3 must be 48 bytes"):
        cose.build_document(**_fields(pcrs={0: bytes(48), 3: bytes(47)}))  # type: ignore[arg-type]
