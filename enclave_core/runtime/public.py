"""The runtime's own routes: public ones (health, enclave-info, attestation) and the control app.

Everything else on the public listener is proxied to the app by
:class:`enclave_core.runtime.proxy.PublicServer`, which asks :func:`is_own_path` first. Each
response of the public app is signed by :class:`~enclave_core.runtime.signing.SigningMiddleware`
(the control app's are not: it is never reachable from outside the parent instance).

``POST /v1/export-key`` (:mod:`enclave_core.runtime.export`) exists only on the control app. The
public listener keeps the path for itself and answers 404, so a request from outside never
reaches the export, nor an app that happens to serve that path.
"""

from __future__ import annotations

import asyncio
import base64
import json

import falcon
import falcon.asgi

from enclave_core.runtime.export import export_keys
from enclave_core.runtime.httperrors import install_error_handlers
from enclave_core.runtime.signing import SigningMiddleware
from enclave_core.runtime.state import RuntimeState

HEALTH_PATH = "/health"
INFO_PATH = "/v1/enclave-info"
ATTESTATION_PATH = "/enclave/attestation"
EXPORT_PATH = "/v1/export-key"
#: Paths the public listener answers itself; EXPORT_PATH only ever with a 404.
OWN_PATHS = frozenset({HEALTH_PATH, INFO_PATH, ATTESTATION_PATH, EXPORT_PATH})
MAX_NONCE_BYTES = 1024
MAX_EXPORT_BODY = 1024


def is_own_path(path: str) -> bool:
    """Whether the runtime itself serves ``path`` (a query string, if present, is ignored)."""
    return path.split("?", 1)[0] in OWN_PATHS


class HealthResource:
    """GET /health: ready, initializing (with the boot stage) or degraded (with the reason)."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Report the runtime's condition: 200 when ready, else 503."""
        status, body = self._state.health()
        resp.status = status
        resp.media = body
        resp.cache_control = ["no-store"]


class EnclaveInfoResource:
    """GET /v1/enclave-info: identity, keys and counters of this enclave."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Describe the enclave (fields not known yet are null)."""
        resp.media = self._state.enclave_info()
        resp.cache_control = ["no-store"]


def parse_nonce(text: str | None) -> bytes:
    """Decode the ``nonce`` query parameter: 1 to 1024 bytes written in hex."""
    if not text:
        raise falcon.HTTPBadRequest(
            title="Bad request", description="query parameter nonce (hex) is required"
        )
    try:
        nonce = bytes.fromhex(text)
    except ValueError:
        raise falcon.HTTPBadRequest(
            title="Bad request", description="nonce must be hexadecimal"
        ) from None
    if not 1 <= len(nonce) <= MAX_NONCE_BYTES:
        raise falcon.HTTPBadRequest(
            title="Bad request", description=f"nonce must be 1 to {MAX_NONCE_BYTES} bytes"
        )
    return nonce


class AttestationResource:
    """GET /enclave/attestation?nonce=<hex>: a base64 attestation document (nitriding-style)."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Return a fresh document binding the nonce and the TLS/signing key hashes."""
        nonce = parse_nonce(req.get_param("nonce"))
        attestation = self._state.attestation
        user_data = self._state.user_data()
        if attestation is None or user_data is None:
            raise falcon.HTTPServiceUnavailable(
                title="Not ready",
                description=f"attestation is not available yet (boot stage {self._state.stage})",
            )
        document = await asyncio.to_thread(
            attestation.attestation, nonce=nonce, user_data=user_data, public_key=None
        )
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = base64.b64encode(document).decode("ascii")
        resp.cache_control = ["no-store"]


class ExportKeyResource:
    """POST /v1/export-key (control listener only): re-encrypt the secrets for the migration.

    The body is empty or ``{}``. Exports run one at a time, in a worker thread.
    """

    def __init__(self, state: RuntimeState) -> None:
        self._state = state
        self._lock = asyncio.Lock()

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Check the target key and export (200), or refuse: 409, 403 or 503 with the reason."""
        if (req.content_length or 0) > MAX_EXPORT_BODY:
            raise falcon.HTTPContentTooLarge(
                title="Content too large", description=f"at most {MAX_EXPORT_BODY} bytes"
            )
        body = (await req.stream.read(MAX_EXPORT_BODY + 1)).strip()
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if parsed != {}:
                raise falcon.HTTPBadRequest(
                    title="Bad request", description="export-key takes an empty body or {}"
                )
        async with self._lock:
            result = await asyncio.to_thread(export_keys, self._state)
        resp.media = result.as_json()
        resp.cache_control = ["no-store"]


def create_public_app(state: RuntimeState) -> falcon.asgi.App:
    """The Falcon app behind the runtime's own public routes; every response is signed."""
    app = falcon.asgi.App(middleware=[SigningMiddleware(state)])
    install_error_handlers(app)
    app.add_route(HEALTH_PATH, HealthResource(state))
    app.add_route(INFO_PATH, EnclaveInfoResource(state))
    app.add_route(ATTESTATION_PATH, AttestationResource(state))
    return app


def create_control_app(state: RuntimeState) -> falcon.asgi.App:
    """The Falcon app of the control listener (never forwarded by ingress).

    ``GET /health`` (the watchdog) and ``POST /v1/export-key`` (the migration).
    """
    app = falcon.asgi.App()
    install_error_handlers(app)
    app.add_route(HEALTH_PATH, HealthResource(state))
    app.add_route(EXPORT_PATH, ExportKeyResource(state))
    return app
