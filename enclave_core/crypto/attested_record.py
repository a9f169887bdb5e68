"""Attested records: a JSON body whose SHA-256 an NSM attestation document binds in ``user_data``.

Three kinds, ``manifest``, ``link`` and ``migration-key``: :func:`make_record` asks the NSM for
the document, :func:`store_record` and :func:`read_record` keep a record in two parameters,
:func:`parse_record` verifies one. The host stores them and cannot forge one. The byte layout and
the bodies: docs/protocols.md, "Attested records".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from enclave_core.crypto.attestation import PCR_SIZE, VerifiedDocument, verify_document
from enclave_core.errors import AttestationError, TamperingDetected
from enclave_core.plugin.interfaces import Attestation, Secrets

KINDS = ("manifest", "link", "migration-key")
#: Each of a record's two parameters is at most this many bytes (what an SSM parameter holds).
MAX_PARAMETER = 8192
ATTESTATIONS_PREFIX = "Attestations/"


@dataclass(frozen=True)
class AttestedRecord:
    """A record whose document verified: its body, the document and the record's digest."""

    kind: str
    body: dict[str, Any]
    document: VerifiedDocument
    attestation: str  # base64, as stored
    digest: str  # SHA-256 hex of the stored record's canonical JSON

    @property
    def pcr0(self) -> str:
        """The PCR0 of the image that made the record."""
        return self.document.pcrs[0].hex()

    @property
    def pcr8(self) -> str | None:
        """That image's PCR8 when it is signed (non-zero), else None."""
        value = self.document.pcrs.get(8)
        return value.hex() if value is not None and any(value) else None

    def as_json(self) -> dict[str, Any]:
        """The record as stored (what ``/v1/enclave-info`` shows of a chain link)."""
        return {"kind": self.kind, "body": self.body, "attestation": self.attestation}


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, ASCII: one encoding per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_user_data(kind: str, body: dict[str, Any]) -> bytes:
    """The 32-byte ``user_data`` of a record's document."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}")
    return hashlib.sha256(f"simple-enclave-{kind}-v1\n".encode() + canonical_json(body)).digest()


def record_digest(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of a stored record: what a later link or manifest names it by."""
    return hashlib.sha256(canonical_json(record)).hexdigest()


def make_record(attestation: Attestation, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Ask the NSM for a document binding ``body``; return the record."""
    document = attestation.attestation(
        user_data=record_user_data(kind, body), nonce=None, public_key=None
    )
    return {"kind": kind, "body": body, "attestation": base64.b64encode(document).decode("ascii")}


def attestation_param(kind: str, body: dict[str, Any]) -> str:
    """Where the document of the record ``(kind, body)`` is stored."""
    name = hashlib.sha256(canonical_json({"kind": kind, "body": body})).hexdigest()[:32]
    return f"{ATTESTATIONS_PREFIX}{name}"


def store_record(secrets: Secrets, param: str, record: dict[str, Any]) -> None:
    """Store ``record`` as ``param`` (its document first, in its own parameter)."""
    kind, body = record["kind"], record["body"]
    text = canonical_json({"kind": kind, "body": body}).decode("ascii")
    if len(text) > MAX_PARAMETER or len(record["attestation"]) > MAX_PARAMETER:
        raise ValueError(f"a {kind} record does not fit in {MAX_PARAMETER}-byte parameters")
    secrets.put(attestation_param(kind, body), record["attestation"])
    secrets.put(param, text)


def read_record(
    secrets: Secrets, param: str, kind: str, *, root: x509.Certificate
) -> AttestedRecord | None:
    """The record stored as ``param``, verified; None when there is none.

    :raises TamperingDetected: naming what is wrong (a missing document included).
    """
    text = secrets.get(param)
    if text is None:
        return None
    what = f"{kind} record {param}"
    try:
        stored = json.loads(text) if len(text) <= MAX_PARAMETER else None
    except ValueError:
        stored = None
    if not isinstance(stored, dict) or set(stored) != {"kind", "body"}:
        raise TamperingDetected(f"{what}: not {{'kind', 'body'}}")
    if stored["kind"] != kind or not isinstance(stored["body"], dict):
        raise TamperingDetected(f"{what}: it is a {stored['kind']!r} record")
    encoded = secrets.get(attestation_param(kind, stored["body"]))
    if encoded is None:
        raise TamperingDetected(f"{what}: its attestation document is missing")
    return parse_record({**stored, "attestation": encoded}, kind, root=root)


def stored_kind(secrets: Secrets, param: str) -> str | None:
    """The kind of the record stored as ``param`` (unverified), or None."""
    text = secrets.get(param)
    try:
        kind = json.loads(text).get("kind") if text is not None else None
    except (ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def parse_record(record: Any, kind: str, *, root: x509.Certificate) -> AttestedRecord:
    """Verify a record of ``kind`` (``{"kind", "body", "attestation"}``); TamperingDetected
    naming what is wrong.

    :param root: the trust anchor the document must chain to.
    """
    what = f"{kind} record"
    if not isinstance(record, dict) or set(record) != {"kind", "body", "attestation"}:
        raise TamperingDetected(f"{what}: not {{'kind', 'body', 'attestation'}}")
    if record["kind"] != kind or not isinstance(record["body"], dict):
        raise TamperingDetected(f"{what}: it is a {record['kind']!r} record")
    encoded = record["attestation"]
    try:
        document = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except (binascii.Error, ValueError):
        document = b""
    if not document:
        raise TamperingDetected(f"{what}: its attestation document is not base64")
    try:
        verified = verify_document(document, root=root)  # at the document's own timestamp
    except AttestationError as exc:
        raise TamperingDetected(
            f"{what}: its attestation document does not verify: {exc}"
        ) from None
    pcr0 = verified.pcrs.get(0)
    if pcr0 is None or verified.debug_mode or pcr0 == bytes(PCR_SIZE):
        raise TamperingDetected(f"{what}: made by a debug-mode enclave (PCR0 all zero)")
    expected = record_user_data(kind, record["body"])
    if verified.user_data is None or not hmac.compare_digest(verified.user_data, expected):
        raise TamperingDetected(f"{what}: its attestation document does not bind this body")
    return AttestedRecord(
        kind=kind,
        body=record["body"],
        document=verified,
        attestation=encoded,
        digest=record_digest(record),
    )
