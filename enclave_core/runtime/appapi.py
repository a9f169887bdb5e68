"""The app API (DESIGN section 5): storage, dynamic secrets and PCRs for the app, on loopback.

Every call needs ``Authorization: Bearer $ENCLAVE_MGMT_TOKEN``. Input is validated before it
reaches a backend, so a bad request changes nothing stored. Backends are synchronous and run in
worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
from typing import Any

import falcon
import falcon.asgi

from enclave_core.errors import ValidationError
from enclave_core.runtime.httperrors import install_error_handlers
from enclave_core.runtime.state import RuntimeState
from enclave_core.runtime.validate import (
    SECRETS_PREFIX,
    check_pcr,
    check_secret_name,
    check_storage_key,
    check_storage_prefix,
)

MAX_STORAGE_BODY = 10 * 1024 * 1024
MAX_JSON_BODY = 64 * 1024


class AuthMiddleware:
    """Checks the Bearer token, then that boot has made storage available."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """401 without a Bearer token, 403 with a wrong one, 503 before storage is ready."""
        state = self._state
        if state.mgmt_token is None:
            raise self._not_ready()
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise falcon.HTTPUnauthorized(
                title="Unauthorized",
                description="this call needs the header Authorization: Bearer $ENCLAVE_MGMT_TOKEN",
                challenges=["Bearer"],
            )
        if not hmac.compare_digest(token.strip().encode(), state.mgmt_token.encode()):
            raise falcon.HTTPForbidden(title="Forbidden", description="wrong management token")
        if not state.storage_ready:
            raise self._not_ready()

    def _not_ready(self) -> falcon.HTTPServiceUnavailable:
        state = self._state
        why = (
            f"the runtime is degraded: {state.boot_error}"
            if state.boot_error
            else f"the runtime is still booting (stage {state.stage})"
        )
        return falcon.HTTPServiceUnavailable(title="Not ready", description=why, retry_after=1)


async def read_body(req: falcon.asgi.Request, limit: int, what: str) -> bytes:
    """Read the request body, refusing (413) more than ``limit`` bytes before and while reading."""
    too_large = falcon.HTTPContentTooLarge(
        title="Content too large", description=f"{what} is limited to {limit} bytes"
    )
    if req.content_length is not None and req.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    total = 0
    async for chunk in req.stream:
        total += len(chunk)
        if total > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(req: falcon.asgi.Request, what: str) -> dict[str, Any]:
    """Read a JSON object body of at most 64 KiB."""
    raw = await read_body(req, MAX_JSON_BODY, what)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError(f"{what}: the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ValidationError(f"{what}: the body must be a JSON object")
    return doc


def _only(doc: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ValidationError(f"{what}: unknown field(s): {', '.join(unknown)}")


class StorageCollection:
    """GET /v1/storage?prefix=: the app's keys (never the dynamic secret records)."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List keys starting with ``prefix``."""
        prefix = check_storage_prefix(req.get_param("prefix") or "")
        assert self._state.storage is not None
        keys = await asyncio.to_thread(self._state.storage.list, prefix)
        resp.media = {"keys": [k for k in keys if not k.startswith(SECRETS_PREFIX)]}


class StorageItem:
    """PUT/GET/DELETE /v1/storage/{key}: encrypted objects with ETags."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    @property
    def _storage(self) -> Any:
        assert self._state.storage is not None
        return self._state.storage

    async def on_put(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, key: str) -> None:
        """Store the raw body; ``If-Match`` / ``If-None-Match: *`` make it conditional."""
        check_storage_key(key)
        if_match = req.get_header("If-Match")
        if_none_match = req.get_header("If-None-Match")
        if if_none_match is not None and if_none_match.strip() != "*":
            raise ValidationError("only If-None-Match: * is supported")
        if if_match is not None and if_none_match is not None:
            raise ValidationError("use either If-Match or If-None-Match, not both")
        data = await read_body(req, MAX_STORAGE_BODY, "a stored object")
        etag = await asyncio.to_thread(
            self._storage.put,
            key,
            data,
            if_match=if_match.strip() if if_match else None,
            if_none_match=if_none_match is not None,
        )
        resp.status = falcon.HTTP_201
        resp.set_header("ETag", etag)
        resp.media = {"key": key, "status": "stored"}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, key: str) -> None:
        """Return the object's bytes and ETag."""
        check_storage_key(key)
        obj = await asyncio.to_thread(self._storage.get, key)
        resp.content_type = "application/octet-stream"
        resp.set_header("ETag", obj.etag)
        resp.data = obj.data

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, key: str
    ) -> None:
        """Delete the object; 404 when it does not exist."""
        check_storage_key(key)
        if not await asyncio.to_thread(self._storage.delete, key):
            raise falcon.HTTPNotFound(title="Not found", description=f"no stored object {key!r}")
        resp.media = {"key": key, "status": "deleted"}


class SecretsCollection:
    """GET /v1/secrets: names, env vars and timestamps, never values."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List the dynamic secrets without their values."""
        assert self._state.dynamic is not None
        secrets, _unreadable = await asyncio.to_thread(self._state.dynamic.load_all)
        resp.media = {"secrets": [s.describe(with_value=False) for s in secrets]}


class SecretItem:
    """PUT/GET/DELETE /v1/secrets/{name}: one dynamic secret."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    @property
    def _dynamic(self) -> Any:
        assert self._state.dynamic is not None
        return self._state.dynamic

    async def on_put(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str) -> None:
        """Create or replace: body ``{"value": str, "env_var"?: str}``."""
        check_secret_name(name)
        doc = await read_json(req, "a dynamic secret")
        _only(doc, {"value", "env_var"}, "a dynamic secret")
        value, env_var = doc.get("value"), doc.get("env_var")
        if not isinstance(value, str):
            raise ValidationError("a dynamic secret: field 'value' must be a string")
        if env_var is not None and not isinstance(env_var, str):
            raise ValidationError("a dynamic secret: field 'env_var' must be a string")
        _secret, created = await asyncio.to_thread(self._dynamic.put, name, value, env_var)
        if created and self._state.dynamic_secrets is not None:
            self._state.dynamic_secrets += 1
        resp.status = falcon.HTTP_201
        resp.media = {"name": name, "status": "stored"}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str) -> None:
        """Return the secret with its value."""
        check_secret_name(name)
        secret = await asyncio.to_thread(self._dynamic.get, name)
        resp.media = secret.describe(with_value=True)
        resp.cache_control = ["no-store"]

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """Delete the secret; 404 when it does not exist."""
        check_secret_name(name)
        if not await asyncio.to_thread(self._dynamic.delete, name):
            raise falcon.HTTPNotFound(title="Not found", description=f"no dynamic secret {name!r}")
        if self._state.dynamic_secrets:
            self._state.dynamic_secrets -= 1
        resp.media = {"name": name, "status": "deleted"}


class ExtendPcr:
    """POST /v1/extend-pcr ``{"pcr":16..31,"data":base64}``."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Extend the PCR; answer its new value in hex."""
        doc = await read_json(req, "extend-pcr")
        _only(doc, {"pcr", "data"}, "extend-pcr")
        pcr = check_pcr(doc.get("pcr"))
        text = doc.get("data")
        if not isinstance(text, str):
            raise ValidationError("extend-pcr: field 'data' must be a base64 string")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("extend-pcr: field 'data' is not valid base64") from None
        assert self._state.attestation is not None
        value = await asyncio.to_thread(self._state.attestation.extend_pcr, pcr, data)
        resp.media = {"pcr": pcr, "status": "extended", "value": value.hex()}


class LockPcr:
    """POST /v1/lock-pcr ``{"pcr":16..31}``."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Lock the PCR against further extension."""
        doc = await read_json(req, "lock-pcr")
        _only(doc, {"pcr"}, "lock-pcr")
        pcr = check_pcr(doc.get("pcr"))
        assert self._state.attestation is not None
        await asyncio.to_thread(self._state.attestation.lock_pcr, pcr)
        resp.media = {"pcr": pcr, "status": "locked"}


def create_app_api(state: RuntimeState) -> falcon.asgi.App:
    """The Falcon ASGI app of the app API, bound to the runtime's state."""
    app = falcon.asgi.App(middleware=[AuthMiddleware(state)])
    install_error_handlers(app)
    app.add_route("/v1/storage", StorageCollection(state))
    app.add_route("/v1/storage/{key:path}", StorageItem(state))
    app.add_route("/v1/secrets", SecretsCollection(state))
    app.add_route("/v1/secrets/{name}", SecretItem(state))
    app.add_route("/v1/extend-pcr", ExtendPcr(state))
    app.add_route("/v1/lock-pcr", LockPcr(state))
    return app
