"""Signed responses: the runtime's own answers carry an Ed25519 signature bound to the request.

Every response the runtime itself serves on the public listener (``/health``,
``/v1/enclave-info``, ``/enclave/attestation``, the errors its Falcon app produces, such as a
400 for a bad nonce or a 405, and the errors the listener writes itself: 502 and 503 for a proxied
path, 413, 400 for a malformed request) carries two headers:

- ``X-Attestation-Signature``: hex of the 64-byte Ed25519 signature over the canonical string;
- ``X-Attestation-Pubkey``: hex of the raw 32-byte Ed25519 public key. Its SHA-256 is the second
  half of the attestation document's ``user_data``, so a client that verified a document knows
  the key is the enclave's.

The canonical string (UTF-8, each field followed by one ``\\n``)::

    simple-enclave-response-v1
    <status code, decimal>
    <hex SHA-256 of the response body as sent>
    <the request's X-Attestation-Nonce header, or empty>

Unlike a signature over the body alone, it binds the status and, through a nonce the client
chose, the request: a recorded response cannot be replayed for another request. A nonce is at
most 256 characters of ``[0-9A-Za-z_-]``; anything else is answered 400 (signed, with an empty
nonce). The body of a ``HEAD`` or 204/304 response is empty, and so is what gets hashed.

Not signed, by design:

- responses proxied from the app: they are streamed both ways (server-sent events, WebSockets,
  large downloads), and a signature over a body must wait for its end; apps that want signed
  answers sign them themselves;
- responses served in the first moments of boot, before the ``attestation`` stage has made the
  signing key; no attestation document exists then either (that route answers 503), so nothing
  can be verified in that window and a verifier that requires signatures simply fails.

:func:`verify_response_signature` is the client side (``enclave verify`` uses it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import falcon
import falcon.asgi
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave_core.errors import AttestationError

if TYPE_CHECKING:  # the client side (enclave verify) needs none of the runtime
    from enclave_core.runtime.state import RuntimeState

CANONICAL_VERSION = "simple-enclave-response-v1"
SIGNATURE_HEADER = "X-Attestation-Signature"
PUBKEY_HEADER = "X-Attestation-Pubkey"
NONCE_HEADER = "X-Attestation-Nonce"
MAX_NONCE_CHARS = 256
NONCE_RE = re.compile(rf"[0-9A-Za-z_-]{{0,{MAX_NONCE_CHARS}}}")
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_BODILESS = frozenset({204, 304})


def check_nonce(nonce: str) -> str:
    """Return ``nonce`` if it may be signed: at most 256 of ``[0-9A-Za-z_-]``; else ValueError."""
    if not isinstance(nonce, str) or NONCE_RE.fullmatch(nonce) is None:
        raise ValueError(
            f"{NONCE_HEADER} must be at most {MAX_NONCE_CHARS} characters of [0-9A-Za-z_-]"
        )
    return nonce


def canonical_message(status: int, body: bytes, nonce: str) -> bytes:
    """The bytes a response signature covers (see the module docstring)."""
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
        raise ValueError(f"status must be an HTTP status code, got {status!r}")
    check_nonce(nonce)
    digest = hashlib.sha256(body).hexdigest()
    return f"{CANONICAL_VERSION}\n{status}\n{digest}\n{nonce}\n".encode("ascii")


def public_key_hex(key: Ed25519PrivateKey) -> str:
    """Hex of the raw 32-byte public key of ``key``."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def sign_response(key: Ed25519PrivateKey, status: int, body: bytes, nonce: str) -> str:
    """Hex of the Ed25519 signature of the canonical string of one response."""
    return key.sign(canonical_message(status, body, nonce)).hex()


def _hex(value: str | None, size: int, what: str) -> bytes:
    if not value:
        raise AttestationError(f"response signature does not verify: no {what}")
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError:
        raise AttestationError(f"response signature does not verify: {what} is not hex") from None
    if len(raw) != size:
        raise AttestationError(
            f"response signature does not verify: {what} has {len(raw)} bytes, expected {size}"
        )
    return raw


def verify_response_signature(
    pubkey_hex: str | None, signature_hex: str | None, status: int, body: bytes, nonce: str
) -> None:
    """Check a signed response; return None when it verifies.

    :param pubkey_hex: the ``X-Attestation-Pubkey`` header (the caller must also check that its
        SHA-256 is the one the attestation document binds).
    :param signature_hex: the ``X-Attestation-Signature`` header.
    :param nonce: the ``X-Attestation-Nonce`` the request carried ("" for none).
    :raises AttestationError: "response signature does not verify: ..." naming why.
    """
    signature = _hex(signature_hex, SIGNATURE_BYTES, f"{SIGNATURE_HEADER} header")
    key = _hex(pubkey_hex, PUBLIC_KEY_BYTES, f"{PUBKEY_HEADER} header")
    try:
        message = canonical_message(status, body, nonce)
    except ValueError as exc:
        raise AttestationError(f"response signature does not verify: {exc}") from None
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise AttestationError(
            "response signature does not verify: the signature does not match the status, "
            "body and nonce"
        ) from None


class SigningMiddleware:
    """Falcon middleware signing each response of the runtime's public app (see module doc)."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Read and check the request's nonce; a malformed one is a (signed) 400."""
        nonce = req.get_header(NONCE_HEADER) or ""
        req.context.attestation_nonce = ""
        try:
            req.context.attestation_nonce = check_nonce(nonce)
        except ValueError as exc:
            raise falcon.HTTPBadRequest(title="Bad request", description=str(exc)) from None

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        """Render the body, pin it, and add the signature and public key headers."""
        key = self._state.signing_key
        if key is None:  # the first moments of boot: no key yet (see module docstring)
            return
        status = resp.status_code
        body = await resp.render_body() or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        # What was signed is exactly what gets sent: the rendered bytes replace text/media.
        resp.text = None
        resp.data = body
        if req.method == "HEAD" or status in _BODILESS:
            body = b""
        nonce = getattr(req.context, "attestation_nonce", "")
        resp.set_header(SIGNATURE_HEADER, sign_response(key, status, body, nonce))
        resp.set_header(PUBKEY_HEADER, public_key_hex(key))


def listener_error_signer(state: RuntimeState) -> Callable[[int, bytes, bytes], bytes]:
    """Sign the errors the public listener writes itself (502, 503, 413, 400) like the app's.

    Returns the header lines to add; nothing before the signing key exists (first moments of boot).
    """

    def sign(status: int, body: bytes, raw_nonce: bytes) -> bytes:
        key = state.signing_key
        if key is None:
            return b""
        try:
            nonce = check_nonce(raw_nonce.decode("latin-1"))
        except ValueError:
            nonce = ""  # a malformed nonce is not echoed into what is signed
        signature = sign_response(key, status, body, nonce)
        return (
            f"{SIGNATURE_HEADER}: {signature}\r\n{PUBKEY_HEADER}: {public_key_hex(key)}\r\n"
        ).encode("latin-1")

    return sign
