"""The app API (README: HTTP APIs): storage, dynamic secrets and PCRs for the app, on loopback.

Every call needs ``Authorization: Bearer $ENCLAVE_MGMT_TOKEN``. Input is validated before it
reaches a backend, so a bad request changes nothing stored. Backends are synchronous and run in
worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from typing import Any

import falcon
import falcon.asgi
from marshmallow import Schema

from enclave_core.errors import ValidationError
from enclave_core.http.errors import install_error_handlers
from enclave_core.http.openapi import OPENAPI_PATH, OpenApiResource
from enclave_core.http.schemas import load_request
from enclave_core.runtime import schemas
from enclave_core.runtime.apidoc import app_document
from enclave_core.runtime.schemas import MAX_JSON_BODY, MAX_STORAGE_BODY
from enclave_core.runtime.state import RuntimeState
from enclave_core.runtime.validate import SECRETS_PREFIX

__all__ = ["MAX_JSON_BODY", "MAX_STORAGE_BODY", "create_app_api", "read_body", "read_json"]


class AuthMiddleware:
    """Checks the Bearer token, then that boot has made storage available."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """401 without a Bearer token, 403 with a wrong one, 503 before storage is ready.

        Before boot has made the token, every call is 503; the OpenAPI document needs the token
        but not storage.
        """
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
        if not state.storage_ready and req.path != OPENAPI_PATH:
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


async def read_json(req: falcon.asgi.Request, schema: Schema, what: str) -> dict[str, Any]:
    """Read a JSON body of at most 64 KiB and load it with ``schema`` (400 naming the field)."""
    raw = await read_body(req, MAX_JSON_BODY, what)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError(f"{what}: the body is not valid JSON") from None
    return load_request(schema, doc)


def _params(req: falcon.asgi.Request) -> dict[str, Any]:
    """The query parameters (a repeated one is a list, which a string field refuses)."""
    return dict(req.params)


def _headers(req: falcon.asgi.Request, *names: str) -> dict[str, str]:
    return {name: value for name in names if (value := req.get_header(name)) is not None}


def _key(key: str) -> str:
    """The ``{key}`` path parameter, validated."""
    return str(load_request(schemas.StorageKeyPathSchema(), {"key": key})["key"])


def _name(name: str) -> str:
    """The ``{name}`` path parameter, validated."""
    return str(load_request(schemas.SecretNamePathSchema(), {"name": name})["name"])


class StorageCollection:
    """GET /v1/storage?prefix=: the app's keys (never the dynamic secret records)."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List keys starting with ``prefix``."""
        prefix = load_request(schemas.StorageListQuerySchema(), _params(req))["prefix"]
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
        _key(key)
        conditions = load_request(
            schemas.ConditionalHeadersSchema(), _headers(req, "If-Match", "If-None-Match")
        )
        if_match = (conditions.get("if_match") or "").strip() or None
        data = await read_body(req, MAX_STORAGE_BODY, "a stored object")
        etag = await asyncio.to_thread(
            self._storage.put,
            key,
            data,
            if_match=if_match,
            if_none_match="if_none_match" in conditions,
        )
        resp.status = falcon.HTTP_201
        resp.set_header("ETag", etag)
        resp.media = {"key": key, "status": "stored"}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, key: str) -> None:
        """Return the object's bytes and ETag."""
        _key(key)
        obj = await asyncio.to_thread(self._storage.get, key)
        resp.content_type = "application/octet-stream"
        resp.set_header("ETag", obj.etag)
        resp.data = obj.data

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, key: str
    ) -> None:
        """Delete the object; 404 when it does not exist."""
        _key(key)
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
        _name(name)
        doc = await read_json(req, schemas.SecretWriteSchema(), "a dynamic secret")
        value, env_var = doc["value"], doc.get("env_var")
        _secret, created = await asyncio.to_thread(self._dynamic.put, name, value, env_var)
        if created and self._state.dynamic_secrets is not None:
            self._state.dynamic_secrets += 1
        resp.status = falcon.HTTP_201
        resp.media = {"name": name, "status": "stored"}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str) -> None:
        """Return the secret with its value."""
        _name(name)
        secret = await asyncio.to_thread(self._dynamic.get, name)
        resp.media = secret.describe(with_value=True)
        resp.cache_control = ["no-store"]

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        """Delete the secret; 404 when it does not exist."""
        _name(name)
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
        doc = await read_json(req, schemas.ExtendPcrSchema(), "extend-pcr")
        pcr = doc["pcr"]
        data = base64.b64decode(doc["data"], validate=True)  # the schema checked it
        assert self._state.attestation is not None
        value = await asyncio.to_thread(self._state.attestation.extend_pcr, pcr, data)
        resp.media = {"pcr": pcr, "status": "extended", "value": value.hex()}


class LockPcr:
    """POST /v1/lock-pcr ``{"pcr":16..31}``."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Lock the PCR against further extension."""
        doc = await read_json(req, schemas.LockPcrSchema(), "lock-pcr")
        pcr = doc["pcr"]
        assert self._state.attestation is not None
        await asyncio.to_thread(self._state.attestation.lock_pcr, pcr)
        resp.media = {"pcr": pcr, "status": "locked"}


def create_app_api(state: RuntimeState) -> falcon.asgi.App:
    """The Falcon ASGI app of the app API, bound to the runtime's state.

    ``GET /openapi.json`` answers its OpenAPI document (behind the token like every route).
    """
    app = falcon.asgi.App(middleware=[AuthMiddleware(state)])
    install_error_handlers(app)
    app.add_route("/v1/storage", StorageCollection(state))
    app.add_route("/v1/storage/{key:path}", StorageItem(state))
    app.add_route("/v1/secrets", SecretsCollection(state))
    app.add_route("/v1/secrets/{name}", SecretItem(state))
    app.add_route("/v1/extend-pcr", ExtendPcr(state))
    app.add_route("/v1/lock-pcr", LockPcr(state))
    app.add_route(OPENAPI_PATH, OpenApiResource(app_document))
    return app
