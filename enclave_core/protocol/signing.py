"""Signed responses: the runtime's own answers carry an Ed25519 signature bound to the request.

The signature covers ``simple-enclave-response-v2``, the request's method and target as sent, the
status, the SHA-256 of the body and the client's nonce; the public key's SHA-256 is in the
attestation document's ``user_data``. The exact format, what is signed and what is not, and how a
client checks it are in docs/protocols.md ("Signed responses"). :func:`verify_response_signature`
is the client side (``enclave verify`` uses it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

import falcon
import falcon.asgi
import httptools
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave_core.errors import AttestationError


class KeyHolder(Protocol):
    """Where the signing key is once boot has made it (the runtime's state)."""

    signing_key: Ed25519PrivateKey | None


CANONICAL_VERSION = "simple-enclave-response-v2"
SIGNATURE_HEADER = "X-Attestation-Signature"
PUBKEY_HEADER = "X-Attestation-Pubkey"
NONCE_HEADER = "X-Attestation-Nonce"
MAX_NONCE_CHARS = 256
NONCE_RE = re.compile(rf"[0-9A-Za-z_-]{{0,{MAX_NONCE_CHARS}}}")
# visible ASCII only: no line break, control character, space or non-ASCII can enter a field
_SIGNABLE_RE = re.compile(r"[\x21-\x7e]*")
# what a path may hold unescaped (RFC 3986 pchar and "/"), for a scope without raw_path
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
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


def _signable(value: str, what: str) -> str:
    if not isinstance(value, str) or _SIGNABLE_RE.fullmatch(value) is None:
        raise ValueError(f"the request {what} must be visible ASCII to be signed, got {value!r}")
    return value


def canonical_message(method: str, target: str, status: int, body: bytes, nonce: str) -> bytes:
    """The bytes a response signature covers (see the module docstring).

    :param method: the request method (upper-cased here); "" for an unparsable request.
    :param target: the request's path and ``?query`` as sent; "" for an unparsable request.
    :raises ValueError: a field that cannot be signed unambiguously.
    """
    method = _signable(method, "method").upper()
    _signable(target, "target")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
        raise ValueError(f"status must be an HTTP status code, got {status!r}")
    check_nonce(nonce)
    digest = hashlib.sha256(body).hexdigest()
    return f"{CANONICAL_VERSION}\n{method}\n{target}\n{status}\n{digest}\n{nonce}\n".encode("ascii")


def signed_target(raw_path: bytes, query: bytes) -> str:
    """The target field of the canonical string for a request's raw path and query."""
    target = raw_path + b"?" + query if query else raw_path
    return target.decode("latin-1")  # bytes beyond ASCII are refused by canonical_message


def public_key_hex(key: Ed25519PrivateKey) -> str:
    """Hex of the raw 32-byte public key of ``key``."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def sign_response(
    key: Ed25519PrivateKey, method: str, target: str, status: int, body: bytes, nonce: str
) -> str:
    """Hex of the Ed25519 signature of the canonical string of one response."""
    return key.sign(canonical_message(method, target, status, body, nonce)).hex()


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
    pubkey_hex: str | None,
    signature_hex: str | None,
    method: str,
    target: str,
    status: int,
    body: bytes,
    nonce: str,
) -> None:
    """Check a signed response; return None when it verifies.

    :param pubkey_hex: the ``X-Attestation-Pubkey`` header (the caller must also check that its
        SHA-256 is the one the attestation document binds).
    :param signature_hex: the ``X-Attestation-Signature`` header.
    :param method: the method of the request this is the answer to.
    :param target: the path and ``?query`` that request was sent to, exactly as sent.
    :param nonce: the ``X-Attestation-Nonce`` the request carried ("" for none).
    :raises AttestationError: "response signature does not verify: ..." naming why.
    """
    signature = _hex(signature_hex, SIGNATURE_BYTES, f"{SIGNATURE_HEADER} header")
    key = _hex(pubkey_hex, PUBLIC_KEY_BYTES, f"{PUBKEY_HEADER} header")
    try:
        message = canonical_message(method, target, status, body, nonce)
    except ValueError as exc:
        raise AttestationError(f"response signature does not verify: {exc}") from None
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise AttestationError(
            "response signature does not verify: the signature does not match the method, path, "
            "status, body and nonce"
        ) from None


class SigningMiddleware:
    """Falcon middleware signing each response of the runtime's public app (see module doc)."""

    def __init__(self, state: KeyHolder) -> None:
        self._state = state

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Take the method, target and nonce to sign; one that cannot be signed is a 400."""
        ctx = req.context
        ctx.attestation_nonce = ctx.signed_method = ctx.signed_target = ""
        # Each field is checked on its own, so that the 400 for one still binds the other.
        errors: list[str] = []
        try:
            ctx.attestation_nonce = check_nonce(req.get_header(NONCE_HEADER) or "")
        except ValueError as exc:  # signed with an empty nonce
            errors.append(str(exc))
        method, target = req.method, _request_target(req)
        try:
            canonical_message(method, target, 200, b"", "")
            ctx.signed_method, ctx.signed_target = method, target
        except ValueError as exc:  # signed over an empty method and target
            errors.append(str(exc))
        if errors:
            raise falcon.HTTPBadRequest(title="Bad request", description="; ".join(errors))

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
        ctx = req.context
        method = getattr(ctx, "signed_method", "")
        target = getattr(ctx, "signed_target", "")
        nonce = getattr(ctx, "attestation_nonce", "")
        resp.set_header(SIGNATURE_HEADER, sign_response(key, method, target, status, body, nonce))
        resp.set_header(PUBKEY_HEADER, public_key_hex(key))


def _request_target(req: falcon.asgi.Request) -> str:
    """The path and query as the client sent them, from the ASGI scope (never Falcon's decoded
    ``req.path``, which may differ from what the client asked for and will verify against)."""
    scope = req.scope
    raw_path = scope.get("raw_path")
    if not isinstance(raw_path, bytes):  # optional in ASGI: re-encode the decoded path
        raw_path = quote(scope.get("path") or req.path, safe=_PATH_SAFE).encode("ascii")
    return signed_target(raw_path, scope.get("query_string") or b"")


def _listener_target(target: bytes) -> str | None:
    """The signed target of a request the listener answers itself, as the proxy routes it;
    None when it cannot be parsed."""
    if target[:1] != b"/" and target != b"*":  # absolute form: its path and query
        try:
            parsed = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            return None
        return signed_target(parsed.path or b"/", parsed.query or b"")
    path, _, query = target.partition(b"?")
    return signed_target(path, query)


def listener_error_signer(
    state: KeyHolder,
) -> Callable[[bytes, bytes, int, bytes, bytes], bytes]:
    """Sign the errors the public listener writes itself (502, 503, 413, 400) like the app's.

    The returned function takes the request's method and raw target (both empty when the request
    line could not be parsed: the client is then answered signed over an empty method and target),
    the status, the body and the raw nonce header, and returns the header lines to add; nothing
    before the signing key exists (first moments of boot).
    """

    def sign(method: bytes, target: bytes, status: int, body: bytes, raw_nonce: bytes) -> bytes:
        key = state.signing_key
        if key is None:
            return b""
        try:
            nonce = check_nonce(raw_nonce.decode("latin-1"))
        except ValueError:
            nonce = ""  # a malformed nonce is not echoed into what is signed
        signed = _listener_target(target) if method else None
        try:
            if signed is None:  # no request line, or a target that cannot be parsed
                raise ValueError("no method and target to sign")
            signature = sign_response(key, method.decode("latin-1"), signed, status, body, nonce)
        except ValueError:  # signed over an empty method and target, as for no request line
            signature = sign_response(key, "", "", status, body, nonce)
        return (
            f"{SIGNATURE_HEADER}: {signature}\r\n{PUBKEY_HEADER}: {public_key_hex(key)}\r\n"
        ).encode("latin-1")

    return sign
