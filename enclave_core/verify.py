"""Verify a live enclave over HTTPS: attestation, PCR0, the TLS certificate and a signed response.

:func:`verify_enclave` (the library behind ``enclave verify``) runs every check, each mandatory,
over one TLS connection that trusts no CA, and raises
:class:`~enclave_core.errors.AttestationError` naming the first that fails. The checks, in order,
are listed in docs/protocols.md ("What enclave verify checks"), with the formats they read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import json
import secrets
import socket
import ssl
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from enclave_core.crypto.attestation import PCR_SIZE, VerifiedDocument, verify_document
from enclave_core.crypto.aws_root import aws_nitro_root
from enclave_core.errors import AttestationError, EnclaveError
from enclave_core.pcrs import normalise_pcr
from enclave_core.protocol.migration_chain import GENESIS, verify_links
from enclave_core.protocol.signing import (
    NONCE_HEADER,
    PUBKEY_HEADER,
    SIGNATURE_HEADER,
    verify_response_signature,
)
from enclave_core.protocol.userdata import check_user_data

NONCE_BYTES = 20  # as nitriding: 40 hex digits
MAX_BODY = 1 << 20
ATTESTATION_PATH = "/enclave/attestation"
INFO_PATH = "/v1/enclave-info"
HTTPS_REQUIRED = "enclave verify needs https: the TLS certificate is part of what is verified"


@dataclass(frozen=True)
class EnclaveVerification:
    """What :func:`verify_enclave` established about a live enclave."""

    url: str
    module_id: str
    pcr0: str
    tls_cert_sha256: str
    attestation_pubkey: str
    nonce: str  # hex, the one the document carries
    timestamp: str  # the document's, ISO-8601 UTC
    previous_pcr0: str
    #: True when the chain link to ``previous_pcr0`` verified; None for ``"genesis"``.
    previous_pcr0_verified: bool | None
    #: The images the secrets went through, oldest first, ending with the verified PCR0.
    migration_chain: tuple[str, ...] = ()
    #: Whether the proven chain reaches the first image (always true for ``"genesis"``).
    migration_chain_complete: bool = True
    verified: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The fields in display order."""
        fields = asdict(self)
        fields["migration_chain"] = list(self.migration_chain)
        return fields


def parse_expected_pcr0(value: str | bytes) -> bytes:
    """The expected PCR0: 48 bytes, or 96 hex characters (an ``0x`` prefix is allowed)."""
    if isinstance(value, bytes):
        raw = value
    else:
        text = value.strip().lower().removeprefix("0x")
        try:
            raw = bytes.fromhex(text) if len(text) == 2 * PCR_SIZE else b""
        except ValueError:
            raw = b""
    if len(raw) != PCR_SIZE:
        raise AttestationError(
            f"expected PCR0: need {2 * PCR_SIZE} hex characters ({PCR_SIZE} bytes)"
        )
    return raw


def check_pcr0(document: VerifiedDocument, expected: bytes) -> None:
    """Refuse a debug-mode document, then require PCR0 == ``expected``."""
    got = document.pcrs.get(0)
    if got is None:
        raise AttestationError("PCR0 mismatch: the document has no PCR0")
    if got == bytes(PCR_SIZE) or document.debug_mode:
        raise AttestationError(
            "debug-mode attestation document (PCR0 is all zero): its measurements prove nothing"
        )
    if not hmac.compare_digest(got, expected):
        raise AttestationError(f"PCR0 mismatch: expected {expected.hex()}, got {got.hex()}")


def check_certificate(certificate_der: bytes, attested_digest: bytes) -> str:
    """Require SHA-256(certificate DER) == the attested digest; return the hex digest."""
    digest = hashlib.sha256(certificate_der).digest()
    if not hmac.compare_digest(digest, attested_digest):
        raise AttestationError(
            f"TLS certificate is not the attested one: the server presented SHA-256 "
            f"{digest.hex()}, the attestation document binds {attested_digest.hex()}"
        )
    return digest.hex()


def check_signed_response(
    headers: dict[str, str],
    method: str,
    target: str,
    status: int,
    body: bytes,
    nonce: str,
    attested_key_digest: bytes,
) -> str:
    """Require a response signed by the attested key; return the public key (hex).

    :param headers: response headers, names in lower case.
    :param method: the method of the request it answers.
    :param target: the path and query that request was sent to, exactly as sent (the signature
        covers them: another route's signed answer does not pass for this one's).
    """
    pubkey = headers.get(PUBKEY_HEADER.lower())
    signature = headers.get(SIGNATURE_HEADER.lower())
    verify_response_signature(pubkey, signature, method, target, status, body, nonce)
    assert pubkey is not None  # verify_response_signature refused a missing one
    digest = hashlib.sha256(bytes.fromhex(pubkey.strip())).digest()
    if not hmac.compare_digest(digest, attested_key_digest):
        raise AttestationError(
            f"response signing key is not the attested one: SHA-256 of {PUBKEY_HEADER} is "
            f"{digest.hex()}, the attestation document binds {attested_key_digest.hex()}"
        )
    return pubkey.strip().lower()


class PinnedConnection:
    """One HTTPS connection that trusts no CA but remembers the server's certificate.

    Trust comes from comparing that certificate with the attested hash, not from a CA. Requests
    reuse the one connection (it never reopens silently), and each first re-checks that the
    peer certificate is still the captured one.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.where = f"{host}:{port}"
        self._conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        self._conn.auto_open = 0  # a closed connection is an error, never a new handshake
        try:
            self._conn.connect()
            sock = self._conn.sock
            certificate = sock.getpeercert(binary_form=True) if sock is not None else None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise AttestationError(f"cannot connect to {self.where}: {_why(exc)}") from None
        if not certificate:
            self.close()
            raise AttestationError(f"TLS: {self.where} presented no certificate")
        self._sock = sock
        self.certificate_der: bytes = certificate

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """GET ``path`` on the pinned connection; return status, headers (lower-case), body."""
        sock = self._conn.sock
        if sock is None or sock is not self._sock:
            raise AttestationError(
                f"{self.where} closed the TLS connection; the checks need one connection"
            )
        if sock.getpeercert(binary_form=True) != self.certificate_der:
            raise AttestationError("TLS certificate is not the attested one: it changed")
        try:
            self._conn.request("GET", path, headers={"Accept": "*/*", **headers})
            response = self._conn.getresponse()
            body = response.read(MAX_BODY + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise AttestationError(f"GET {_path(path)} on {self.where}: {_why(exc)}") from None
        if len(body) > MAX_BODY:
            raise AttestationError(f"GET {_path(path)}: the answer exceeds {MAX_BODY} bytes")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _path(path: str) -> str:
    return path.split("?", 1)[0]


def _why(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _split_url(url: str) -> tuple[str, int, str]:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise AttestationError(f"--url {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "http":
        raise AttestationError(HTTPS_REQUIRED)
    if scheme != "https" or not parts.hostname:
        raise AttestationError(f"--url {url!r}: expected https://HOST[:PORT]")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise AttestationError(f"--url {url!r}: no query, fragment or credentials allowed")
    return parts.hostname, port or 443, parts.path.rstrip("/")


def _decode_document(status: int, body: bytes) -> bytes:
    if status != 200:
        raise AttestationError(f"GET {ATTESTATION_PATH} answered HTTP {status}, expected 200")
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise AttestationError(f"GET {ATTESTATION_PATH}: the answer is not base64") from None


def _info_document(status: int, body: bytes) -> dict[str, Any]:
    if status != 200:
        raise AttestationError(f"GET {INFO_PATH} answered HTTP {status}, expected 200")
    try:
        info = json.loads(body)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise AttestationError(f"GET {INFO_PATH}: the answer is not a JSON object")
    return info


def _check_info(info: dict[str, Any], pcr0: str, pubkey: str, cert_sha256: str) -> None:
    """The signed enclave-info must describe what was verified."""
    for field, verified in (
        ("pcr0", pcr0),
        ("attestation_pubkey", pubkey),
        ("tls_cert_sha256", cert_sha256),
    ):
        claimed = info.get(field)
        if not isinstance(claimed, str) or claimed.lower() != verified:
            raise AttestationError(
                f"enclave-info {field} is {claimed!r}, not the verified {verified}"
            )


@dataclass(frozen=True)
class ChainCheck:
    """What :func:`check_migration_chain` proved."""

    previous_pcr0: str
    verified: bool | None  # None for "genesis"
    images: tuple[str, ...]  # oldest first, ending with the running image
    complete: bool


def _pcr0(value: Any, what: str) -> str:
    try:
        return normalise_pcr(str(value), what)
    except EnclaveError as exc:
        raise AttestationError(str(exc)) from None


def check_migration_chain(
    info: dict[str, Any],
    pcr0: str,
    root: x509.Certificate,
    allowed_previous: frozenset[str] | None = None,
) -> ChainCheck:
    """Check the migration chain enclave-info reports (see the module docstring, point 8).

    :param allowed_previous: the predecessors a user accepts (``--allow-previous-pcr0``); None
        accepts any the chain proves.
    :raises AttestationError: naming what does not hold.
    """
    previous, origin = info.get("previous_pcr0"), info.get("key_origin")
    links = info.get("migration_chain")
    if previous == GENESIS:
        if origin != "genesis" or links:
            raise AttestationError(
                "previous_pcr0: the enclave claims to be a first image (genesis), but its KMS key "
                "was made by a migration: the chain is being hidden"
            )
        return ChainCheck(GENESIS, None, (pcr0,), True)
    if not isinstance(previous, str) or not previous:
        raise AttestationError(
            f"previous_pcr0: enclave-info reports {previous!r}: the enclave has no verified chain "
            "(boot unfinished, or its manifest did not verify)"
        )
    previous = _pcr0(previous, "previous_pcr0")
    if origin != "migration":
        raise AttestationError(
            f"key_origin: enclave-info reports {origin!r} for an enclave with a predecessor"
        )
    if not isinstance(links, list) or not links:
        raise AttestationError(
            f"migration_chain: no chain link proves previous PCR0 {previous[:16]}… (a link "
            "parameter was deleted, or the enclave could not verify it)"
        )
    key_id = info.get("kms_key_id")
    if not isinstance(key_id, str) or not key_id:
        raise AttestationError("chain link: enclave-info names no kms_key_id to check it against")
    report = verify_links(links, root=root, pcr0=pcr0, key_id=key_id, require_start=False)
    last = report.links[-1]
    if last.body["from_pcr0"] != previous:
        raise AttestationError(
            f"previous_pcr0 {previous[:16]}… is not the image the newest chain link was made by"
        )
    if info.get("previous_pcr0_attestation") != last.attestation:
        raise AttestationError(
            "previous_pcr0_attestation is not the newest chain link's attestation document"
        )
    images = tuple(str(link.body["from_pcr0"]) for link in report.links) + (pcr0,)
    if allowed_previous is not None:
        if not report.complete:
            raise AttestationError(
                f"migration_chain: {report.problem}, so not every predecessor can be checked "
                "against --allow-previous-pcr0"
            )
        for link in report.links:
            if link.body["from_pcr0"] not in allowed_previous:
                raise AttestationError(
                    f"previous PCR0 {str(link.body['from_pcr0'])[:16]}… (chain link "
                    f"{link.body['index']}) is not one of --allow-previous-pcr0"
                )
    return ChainCheck(previous, True, images, report.complete)


def verify_enclave(
    url: str,
    expected_pcr0: str | bytes,
    *,
    root: x509.Certificate | None = None,
    timeout: float = 10.0,
    allowed_previous: frozenset[str] | None = None,
) -> EnclaveVerification:
    """Verify the enclave serving ``url`` (see the module docstring for every check).

    :param expected_pcr0: the PCR0 the enclave must run (48 bytes or 96 hex characters).
    :param root: the trust anchor; default the pinned AWS Nitro Enclaves root G1 (give the dev
        root, ``.enclave/dev-root.pem``, for `enclave dev`).
    :param allowed_previous: the predecessor PCR0s a user accepts; None accepts any proven one.
    :raises AttestationError: naming the check that failed.
    """
    host, port, base = _split_url(url)
    expected = parse_expected_pcr0(expected_pcr0)
    trusted = aws_nitro_root() if root is None else root
    nonce = secrets.token_bytes(NONCE_BYTES)
    connection = PinnedConnection(host, port, timeout)
    try:
        att_nonce = secrets.token_hex(16)
        att_target = f"{base}{ATTESTATION_PATH}?nonce={nonce.hex()}"
        status, headers, body = connection.get(att_target, {NONCE_HEADER: att_nonce})
        document = verify_document(
            _decode_document(status, body),
            root=trusted,
            at=datetime.now(UTC),
            expected_nonce=nonce,
        )
        check_pcr0(document, expected)
        cert_digest, key_digest = check_user_data(document.user_data)
        cert_sha256 = check_certificate(connection.certificate_der, cert_digest)
        pubkey = check_signed_response(
            headers, "GET", att_target, status, body, att_nonce, key_digest
        )
        info_nonce = secrets.token_hex(16)
        info_target = f"{base}{INFO_PATH}"
        status, headers, body = connection.get(info_target, {NONCE_HEADER: info_nonce})
        info = _info_document(status, body)
        check_signed_response(headers, "GET", info_target, status, body, info_nonce, key_digest)
        pcr0 = document.pcrs[0].hex()
        _check_info(info, pcr0, pubkey, cert_sha256)
    finally:
        connection.close()
    chain = check_migration_chain(info, pcr0, trusted, allowed_previous)
    return EnclaveVerification(
        url=url,
        module_id=document.module_id,
        pcr0=pcr0,
        tls_cert_sha256=cert_sha256,
        attestation_pubkey=pubkey,
        nonce=nonce.hex(),
        timestamp=document.timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        previous_pcr0=chain.previous_pcr0,
        previous_pcr0_verified=chain.verified,
        migration_chain=chain.images,
        migration_chain_complete=chain.complete,
    )
