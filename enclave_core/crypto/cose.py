"""Nitro attestation documents: COSE_Sign1 envelopes and their CBOR payloads.

Building (:func:`build_document`, :func:`sign1`) serves the simulated NSM; parsing
(:func:`decode_sign1`, :func:`decode_document`) is strict enough for documents from real hardware
(one CBOR item, no duplicate or unknown keys, types and sizes as the Nitro CDDL says).
:func:`verify_signature` checks only the COSE signature; the chain is elsewhere. The format:
docs/protocols.md, "Attestation documents".
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, NamedTuple

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from enclave_core.errors import AttestationError

#: The protected header of every Nitro document: bstr-wrapped ``{1: -35}`` (alg ES384).
PROTECTED_ES384 = b"\xa1\x01\x38\x22"
#: COSE ``alg`` label and the ES384 algorithm identifier.
ALG_LABEL = 1
ALG_ES384 = -35
#: CBOR tag of a tagged COSE_Sign1 (accepted when parsing, never emitted).
COSE_SIGN1_TAG = 18
#: Payload keys in the order real hardware emits them.
DOCUMENT_KEYS = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
)
MANDATORY_KEYS = DOCUMENT_KEYS[:6]
OPTIONAL_KEYS = DOCUMENT_KEYS[6:]
#: PCR length for each digest name.
DIGEST_SIZES = {"SHA256": 32, "SHA384": 48, "SHA512": 64}
MAX_FIELD_BYTES = 1024
MAX_PAYLOAD_BYTES = 16384
_COORD = 48  # bytes of one P-384 coordinate, and of r and s


class Sign1(NamedTuple):
    """A decoded COSE_Sign1: the four elements, the protected header still as received."""

    protected: bytes
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes


def _loads_strict(data: bytes, what: str) -> Any:
    """Decode exactly one definite-length CBOR item with no duplicate keys and no trailing bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AttestationError(f"{what}: expected bytes, got {type(data).__name__}")
    buf = io.BytesIO(bytes(data))
    try:
        # read_size=1 keeps the decoder from reading ahead, so tell() is exactly what it consumed.
        decoder = cbor2.CBORDecoder(
            buf, read_size=1, allow_indefinite=False, allow_duplicate_keys=False
        )
        item = decoder.decode()
    except Exception as exc:  # cbor2 raises several types (CBORDecodeError, ValueError...)
        raise AttestationError(f"{what}: invalid CBOR: {exc}") from None
    if buf.tell() != len(data):
        raise AttestationError(
            f"{what}: {len(data) - buf.tell()} trailing byte(s) after the CBOR item"
        )
    return item


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """Return the bytes COSE_Sign1 signs: ``["Signature1", protected, h'', payload]``."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def build_document(
    *,
    module_id: str,
    timestamp_ms: int,
    pcrs: dict[int, bytes],
    certificate: bytes,
    cabundle: list[bytes],
    public_key: bytes | None,
    user_data: bytes | None,
    nonce: bytes | None,
) -> bytes:
    """Encode an attestation document payload (the CBOR map) in the Nitro key order.

    PCRs are emitted in ascending index order; ``None`` optional fields become CBOR ``null``.
    The result is checked with :func:`decode_document`, so a malformed document is never built.
    """
    document = {
        "module_id": module_id,
        "digest": "SHA384",
        "timestamp": int(timestamp_ms),
        "pcrs": {int(i): bytes(pcrs[i]) for i in sorted(pcrs)},
        "certificate": bytes(certificate),
        "cabundle": [bytes(c) for c in cabundle],
        "public_key": None if public_key is None else bytes(public_key),
        "user_data": None if user_data is None else bytes(user_data),
        "nonce": None if nonce is None else bytes(nonce),
    }
    payload = cbor2.dumps(document)
    decode_document(payload)
    return payload


def sign1(payload: bytes, private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign ``payload`` with a P-384 key and return the untagged COSE_Sign1 bytes."""
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
        private_key.curve, ec.SECP384R1
    ):
        raise AttestationError("COSE sign: the signing key must be an EC P-384 private key")
    der = private_key.sign(sig_structure(PROTECTED_ES384, payload), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")
    return cbor2.dumps([PROTECTED_ES384, {}, payload, signature])


def decode_sign1(data: bytes) -> Sign1:
    """Parse a COSE_Sign1 (tagged 18 or untagged) strictly; raise AttestationError if malformed.

    Checks: one CBOR item and nothing after it, a 4-element array of (bstr, map, bstr, bstr), a
    protected header decoding to a map with ``alg`` = ES384, no ``alg`` in the unprotected header,
    a 1..16384-byte payload and a 96-byte signature.
    """
    item = _loads_strict(data, "COSE_Sign1")
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise AttestationError(f"COSE_Sign1: unexpected CBOR tag {item.tag} (expected 18)")
        item = item.value
    if not isinstance(item, (list, tuple)) or len(item) != 4:
        raise AttestationError("COSE_Sign1: expected an array of 4 elements")
    protected, unprotected, payload, signature = item
    if not isinstance(protected, bytes):
        raise AttestationError("COSE_Sign1: the protected header is not a byte string")
    # Inside a tag cbor2 returns immutable containers (a frozendict), hence Mapping.
    if not isinstance(unprotected, Mapping):
        raise AttestationError("COSE_Sign1: the unprotected header is not a map")
    if not isinstance(payload, bytes) or not 1 <= len(payload) <= MAX_PAYLOAD_BYTES:
        raise AttestationError("COSE_Sign1: the payload is not a byte string of 1..16384 bytes")
    if not isinstance(signature, bytes) or len(signature) != 2 * _COORD:
        raise AttestationError("COSE_Sign1: the signature is not a 96-byte byte string")
    header = _loads_strict(protected, "COSE_Sign1 protected header")
    if not isinstance(header, Mapping) or header.get(ALG_LABEL) != ALG_ES384:
        raise AttestationError("COSE_Sign1: the protected header does not name alg ES384 (-35)")
    if ALG_LABEL in unprotected:
        raise AttestationError("COSE_Sign1: alg must not appear in the unprotected header")
    return Sign1(protected, dict(unprotected), payload, signature)


def _check_bytes(document: dict[str, Any], key: str, low: int, high: int) -> None:
    value = document[key]
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        raise AttestationError(f"attestation document: {key} must be {low}..{high} bytes")


def decode_document(payload: bytes) -> dict[str, Any]:
    """Parse an attestation document payload strictly and return it as a dict (keys in order).

    Only the nine known keys are allowed; the six mandatory ones must be non-null; types and sizes
    follow the Nitro CDDL (PCR values sized by the digest, fields of at most 1024 bytes).
    """
    document = _loads_strict(payload, "attestation document")
    if not isinstance(document, dict):
        raise AttestationError("attestation document: expected a CBOR map")
    unknown = [k for k in document if k not in DOCUMENT_KEYS]
    if unknown:
        raise AttestationError(f"attestation document: unknown key(s) {unknown!r}")
    missing = [k for k in MANDATORY_KEYS if document.get(k) is None]
    if missing:
        raise AttestationError(f"attestation document: missing mandatory field(s) {missing!r}")
    if not isinstance(document["module_id"], str) or not document["module_id"]:
        raise AttestationError("attestation document: module_id must be a non-empty text string")
    digest = document["digest"]
    if not isinstance(digest, str) or digest not in DIGEST_SIZES:  # a list is unhashable
        raise AttestationError(f"attestation document: unsupported digest {digest!r}")
    timestamp = document["timestamp"]
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 < timestamp < 2**64:
        raise AttestationError("attestation document: timestamp must be a positive uint64")
    pcrs = document["pcrs"]
    if not isinstance(pcrs, dict) or not 1 <= len(pcrs) <= 32:
        raise AttestationError("attestation document: pcrs must be a map of 1..32 entries")
    for index, value in pcrs.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 32:
            raise AttestationError(f"attestation document: invalid PCR index {index!r}")
        if not isinstance(value, bytes) or len(value) != DIGEST_SIZES[digest]:
            raise AttestationError(
                f"attestation document: PCR{index} must be {DIGEST_SIZES[digest]} bytes"
            )
    _check_bytes(document, "certificate", 1, MAX_FIELD_BYTES)
    cabundle = document["cabundle"]
    if not isinstance(cabundle, list) or not cabundle:
        raise AttestationError("attestation document: cabundle must be a non-empty array")
    for cert in cabundle:
        if not isinstance(cert, bytes) or not 1 <= len(cert) <= MAX_FIELD_BYTES:
            raise AttestationError("attestation document: cabundle entries must be 1..1024 bytes")
    for key in OPTIONAL_KEYS:
        document.setdefault(key, None)
        if document[key] is not None:
            _check_bytes(document, key, 0, MAX_FIELD_BYTES)
    return {key: document[key] for key in DOCUMENT_KEYS}


def verify_signature(sign1_bytes: bytes, public_key: ec.EllipticCurvePublicKey) -> None:
    """Check the COSE_Sign1 signature with ``public_key`` (the leaf's); raise AttestationError.

    Only the envelope is parsed; the certificate chain is not checked here.
    """
    envelope = decode_sign1(sign1_bytes)
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP384R1
    ):
        raise AttestationError("COSE verify: the key must be an EC P-384 public key")
    r = int.from_bytes(envelope.signature[:_COORD], "big")
    s = int.from_bytes(envelope.signature[_COORD:], "big")
    try:
        public_key.verify(
            encode_dss_signature(r, s),
            sig_structure(envelope.protected, envelope.payload),
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature:
        raise AttestationError(
            "COSE verify: the attestation document signature is invalid"
        ) from None
