"""The runtime's own routes: public ones (health, enclave-info, attestation) and the control app.

The public listener asks :func:`is_own_path` first and proxies everything else to the app; each
public answer is signed (:class:`~enclave_core.protocol.signing.SigningMiddleware`). The control
app alone has ``POST /v1/migration-key`` and ``POST /v1/export-key``: the public listener keeps
both paths and answers 404, so no request from outside (nor the app) reaches them.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import falcon
import falcon.asgi

from enclave_core.errors import ValidationError
from enclave_core.http.errors import install_error_handlers
from enclave_core.http.openapi import OPENAPI_PATH, OpenApiResource
from enclave_core.http.schemas import load_request
from enclave_core.protocol.signing import SigningMiddleware
from enclave_core.runtime import schemas
from enclave_core.runtime.apidoc import control_document, public_document
from enclave_core.runtime.export import export_keys
from enclave_core.runtime.migration_key import create_migration_key
from enclave_core.runtime.schemas import MAX_EXPORT_BODY
from enclave_core.runtime.state import RuntimeState

HEALTH_PATH = "/health"
INFO_PATH = "/v1/enclave-info"
ATTESTATION_PATH = "/enclave/attestation"
EXPORT_PATH = "/v1/export-key"
MIGRATION_KEY_PATH = "/v1/migration-key"
#: Paths the public listener answers itself; the control paths only ever with a 404.
NOT_A_MIGRATION_KEY_REQUEST = "migration-key takes {target_pcr0, migration_id, target_pcr8?}"
CONTROL_PATHS = frozenset({EXPORT_PATH, MIGRATION_KEY_PATH})
OWN_PATHS = frozenset({HEALTH_PATH, INFO_PATH, ATTESTATION_PATH, OPENAPI_PATH}) | CONTROL_PATHS


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


def parse_nonce(params: dict[str, Any]) -> bytes:
    """Decode the ``nonce`` query parameter: 1 to 1024 bytes written in hex (400 otherwise)."""
    query = load_request(schemas.AttestationQuerySchema(), params)
    return bytes.fromhex(query["nonce"])


class AttestationResource:
    """GET /enclave/attestation?nonce=<hex>: a base64 attestation document (nitriding-style)."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Return a fresh document binding the nonce and the TLS/signing key hashes."""
        nonce = parse_nonce(dict(req.params))
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


class ReservedResource:
    """The control paths on the public listener: always 404 (see the module docstring)."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Never export from here."""
        raise falcon.HTTPNotFound(title="Not found", description="no such route")


async def _small_json(req: falcon.asgi.Request, not_json: str) -> Any:
    """The request's JSON body (None when empty), at most MAX_EXPORT_BODY bytes."""
    if (req.content_length or 0) > MAX_EXPORT_BODY:
        raise falcon.HTTPContentTooLarge(
            title="Content too large", description=f"at most {MAX_EXPORT_BODY} bytes"
        )
    body = (await req.stream.read(MAX_EXPORT_BODY + 1)).strip()
    if len(body) > MAX_EXPORT_BODY:
        raise falcon.HTTPContentTooLarge(
            title="Content too large", description=f"at most {MAX_EXPORT_BODY} bytes"
        )
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError(not_json) from None


class MigrationKeyResource:
    """POST /v1/migration-key (control listener only): make the key for the successor.

    One call at a time (shared with the export), in a worker thread.
    """

    def __init__(self, state: RuntimeState, lock: asyncio.Lock) -> None:
        self._state = state
        self._lock = lock

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Create (or return) the migration key: 200, or 400, 403, 409, 503 with the reason."""
        body = await _small_json(req, NOT_A_MIGRATION_KEY_REQUEST)
        request = load_request(schemas.MigrationKeyRequestSchema(), body or {})
        async with self._lock:
            key = await asyncio.to_thread(
                create_migration_key,
                self._state,
                target_pcr0=request["target_pcr0"],
                target_pcr8=request["target_pcr8"],
                migration_id=request["migration_id"],
            )
        resp.media = key.as_json()
        resp.cache_control = ["no-store"]


class ExportKeyResource:
    """POST /v1/export-key (control listener only): re-encrypt the secrets for the migration.

    The body is empty or ``{}``. Exports run one at a time, in a worker thread.
    """

    def __init__(self, state: RuntimeState, lock: asyncio.Lock) -> None:
        self._state = state
        self._lock = lock

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Check the target key and export (200), or refuse: 409, 403 or 503 with the reason."""
        parsed = await _small_json(req, "export-key takes an empty body or {}")
        if parsed is not None:
            load_request(schemas.ExportKeyRequestSchema(), parsed)
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
    for path in sorted(CONTROL_PATHS):
        app.add_route(path, ReservedResource())
    app.add_route(OPENAPI_PATH, OpenApiResource(public_document))
    return app


def create_control_app(state: RuntimeState) -> falcon.asgi.App:
    """The Falcon app of the control listener (never forwarded by ingress).

    ``GET /health`` (the watchdog), ``POST /v1/migration-key`` and ``POST /v1/export-key`` (the
    migration) and ``GET /openapi.json``.
    """
    app = falcon.asgi.App()
    install_error_handlers(app)
    migration_lock = asyncio.Lock()
    app.add_route(HEALTH_PATH, HealthResource(state))
    app.add_route(MIGRATION_KEY_PATH, MigrationKeyResource(state, migration_lock))
    app.add_route(EXPORT_PATH, ExportKeyResource(state, migration_lock))
    app.add_route(OPENAPI_PATH, OpenApiResource(control_document))
    return app
