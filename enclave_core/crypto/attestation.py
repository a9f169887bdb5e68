"""Verify an AWS Nitro attestation document against a trusted root.

:func:`verify_document` checks, in order and all mandatory: the COSE_Sign1 envelope, the payload,
the certificate chain and its validity at ``at`` (by default the document's own timestamp), the
COSE signature, then, when asked, expected PCRs and the nonce; the only exception it raises is
:class:`AttestationError`, naming the check. A production verifier passes ``at=now`` and a nonce
it issued. The format: docs/protocols.md, "Attestation documents".
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_core.crypto import cose
from enclave_core.crypto.aws_root import aws_nitro_root
from enclave_core.crypto.x509path import verify_chain
from enclave_core.errors import AttestationError

PCR_SIZE = 48  # SHA-384, the only digest Nitro uses
DEBUG_PCRS = (0, 1, 2)  # all zero in debug mode
_MAX_DEPTH = 8  # real documents nest 3 levels deep (tag, array or map, element)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class VerifiedDocument:
    """A Nitro attestation document that passed every check of :func:`verify_document`."""

    module_id: str
    timestamp: datetime  # UTC, millisecond precision
    digest: str
    pcrs: dict[int, bytes]
    certificate: bytes  # the leaf certificate, DER
    cabundle: list[bytes]  # DER, root first, as in the document
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    debug_mode: bool  # PCR0, PCR1 and PCR2 all zero
    verified_at: datetime  # the time the certificates were checked at


def _skip_item(data: bytes, pos: int, what: str, depth: int, allow_tag: bool) -> int:
    """Return the offset after the CBOR item at ``pos``; refuse anything outside the subset."""
    if depth > _MAX_DEPTH:
        raise AttestationError(f"{what}: CBOR nested deeper than {_MAX_DEPTH} levels")
    if pos >= len(data):
        raise AttestationError(f"{what}: truncated CBOR")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if major == 7:
        if initial == 0xF6:  # null, the only simple value Nitro uses
            return pos
        raise AttestationError(f"{what}: CBOR simple value or float 0x{initial:02x} not allowed")
    if info >= 28:
        raise AttestationError(f"{what}: indefinite-length or reserved CBOR encoding not allowed")
    argument = info
    if info >= 24:
        size = 1 << (info - 24)
        if size > len(data) - pos:
            raise AttestationError(f"{what}: truncated CBOR")
        argument = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    if major in (0, 1):
        return pos
    if major in (2, 3):
        if argument > len(data) - pos:
            raise AttestationError(f"{what}: truncated CBOR")
        return pos + argument
    if major == 6:
        if not (allow_tag and argument == cose.COSE_SIGN1_TAG):
            raise AttestationError(f"{what}: CBOR tag {argument} not allowed")
        return _skip_item(data, pos, what, depth + 1, False)
    count = argument * 2 if major == 5 else argument
    if count > len(data) - pos:  # every item takes at least one byte
        raise AttestationError(f"{what}: truncated CBOR")
    for _ in range(count):
        pos = _skip_item(data, pos, what, depth + 1, False)
    return pos


def check_plain_cbor(data: bytes, what: str, *, allow_cose_tag: bool = False) -> None:
    """Raise AttestationError unless ``data`` is one item of the plain CBOR subset Nitro uses."""
    end = _skip_item(data, 0, what, 0, allow_cose_tag)
    if end != len(data):
        raise AttestationError(f"{what}: {len(data) - end} trailing byte(s) after the CBOR item")


def _timestamp(milliseconds: int) -> datetime:
    try:
        return _EPOCH + timedelta(milliseconds=milliseconds)
    except OverflowError:
        raise AttestationError(f"payload: timestamp {milliseconds} is out of range") from None


def _utc(moment: datetime) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise AttestationError("verification time: expected a timezone-aware datetime")
    return moment.astimezone(UTC)


def _check_pcrs(pcrs: dict[int, bytes], expected: dict[int, bytes]) -> None:
    for index in sorted(expected):
        want = expected[index]
        if not isinstance(want, bytes):
            raise AttestationError(f"expected PCR{index}: expected bytes")
        got = pcrs.get(index)
        if got is None:
            raise AttestationError(
                f"PCR{index} mismatch: expected {want.hex()}, the document has no PCR{index}"
            )
        if not hmac.compare_digest(got, want):
            raise AttestationError(f"PCR{index} mismatch: expected {want.hex()}, got {got.hex()}")


def _check_nonce(nonce: bytes | None, expected: bytes) -> None:
    if nonce is None:
        raise AttestationError(
            f"nonce mismatch: expected a {len(expected)}-byte nonce, the document has none"
        )
    if not hmac.compare_digest(nonce, expected):
        raise AttestationError(
            f"nonce mismatch: the document's {len(nonce)}-byte nonce is not the expected "
            f"{len(expected)}-byte nonce"
        )


def _verify(
    data: bytes,
    root: x509.Certificate | None,
    at: datetime | None,
    expected_pcrs: dict[int, bytes] | None,
    expected_nonce: bytes | None,
) -> VerifiedDocument:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AttestationError(f"attestation document: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    # 1. envelope
    check_plain_cbor(data, "COSE_Sign1", allow_cose_tag=True)
    envelope = cose.decode_sign1(data)
    check_plain_cbor(envelope.protected, "COSE_Sign1 protected header")
    if cbor2.loads(envelope.protected) != {cose.ALG_LABEL: cose.ALG_ES384}:
        raise AttestationError("COSE_Sign1: the protected header must be exactly {1: -35} (ES384)")
    # 2. payload
    check_plain_cbor(envelope.payload, "payload")
    document = cose.decode_document(envelope.payload)
    if document["digest"] != "SHA384":
        raise AttestationError(f"payload: digest must be 'SHA384', got {document['digest']!r}")
    timestamp = _timestamp(document["timestamp"])
    # 3 and 4. chain and validity
    when = _utc(at) if at is not None else timestamp
    trusted = aws_nitro_root() if root is None else root
    if not isinstance(trusted, x509.Certificate):
        raise AttestationError("trusted root: expected an x509.Certificate")
    leaf = verify_chain(document["certificate"], document["cabundle"], trusted, when)
    # 5. COSE signature, with the key the chain vouches for
    leaf_key = leaf.public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey):  # verify_chain refused other keys
        raise AttestationError("certificate chain: the leaf has no EC public key")
    cose.verify_signature(data, leaf_key)
    # 6. policy
    pcrs: dict[int, bytes] = dict(document["pcrs"])
    if expected_pcrs:
        _check_pcrs(pcrs, expected_pcrs)
    if expected_nonce is not None:
        _check_nonce(document["nonce"], bytes(expected_nonce))
    return VerifiedDocument(
        module_id=document["module_id"],
        timestamp=timestamp,
        digest=document["digest"],
        pcrs=pcrs,
        certificate=document["certificate"],
        cabundle=list(document["cabundle"]),
        public_key=document["public_key"],
        user_data=document["user_data"],
        nonce=document["nonce"],
        debug_mode=all(pcrs.get(i) == bytes(PCR_SIZE) for i in DEBUG_PCRS),
        verified_at=when,
    )


def verify_document(
    data: bytes,
    *,
    root: x509.Certificate | None = None,
    at: datetime | None = None,
    expected_pcrs: dict[int, bytes] | None = None,
    expected_nonce: bytes | None = None,
) -> VerifiedDocument:
    """Verify a Nitro attestation document (COSE_Sign1 bytes) and return its checked contents.

    :param root: the trust anchor; default the pinned AWS Nitro Enclaves root G1. Pass the dev
        root (``state_dir/dev-root.pem``) for documents of the simulated NSM.
    :param at: when the certificates must be valid (timezone-aware); default the document's own
        timestamp, which suits archived documents but not a live check: pass the current time.
    :param expected_pcrs: PCR values that must match exactly (index -> 48 bytes).
    :param expected_nonce: the nonce the document must carry.
    :raises AttestationError: naming the check that failed; no other exception escapes.
    """
    try:
        return _verify(data, root, at, expected_pcrs, expected_nonce)
    except AttestationError:
        raise
    except Exception as exc:  # the safety net the module docstring promises
        detail = str(exc)[:200]  # bounded: a parser's message may quote input bytes
        raise AttestationError(
            f"attestation document: unexpected failure ({type(exc).__name__}: {detail})"
        ) from None
