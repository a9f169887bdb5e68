"""The OpenAPI documents of the runtime's three listeners (see :mod:`enclave_core.http.openapi`).

Every operation lists each status code its handler can answer, with the schema of the body. The
request schemas are the ones the handlers load (:mod:`.schemas`), so the documents and the
validation cannot drift apart; the tests also compare each route of the Falcon apps with the
documents and validate real answers against them.
"""

from __future__ import annotations

import functools
from typing import Any

from enclave_core.http.openapi import (
    BEARER,
    JSON,
    OCTET_STREAM,
    OPENAPI_PATH,
    TEXT,
    add_bearer_scheme,
    add_document_path,
    document_operation,
    error,
    json_body,
    new_spec,
    render,
)
from enclave_core.http.schemas import ErrorSchema
from enclave_core.protocol.signing import NONCE_HEADER, PUBKEY_HEADER, SIGNATURE_HEADER
from enclave_core.runtime import schemas as s

MAX_STORAGE_BODY = s.MAX_STORAGE_BODY
MAX_JSON_BODY = s.MAX_JSON_BODY
MAX_EXPORT_BODY = s.MAX_EXPORT_BODY

_NOT_READY = "the runtime is booting or degraded (the description says which)"
_BACKEND = "the storage backend failed"
_TAMPERED = "a stored record does not decrypt (tampered with, or copied from another key)"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


# ------------------------------------------------------------------ public listener


def _signed(response: dict[str, Any]) -> dict[str, Any]:
    """The runtime signs each answer of its own public routes (once boot made the key)."""
    response["headers"] = {
        SIGNATURE_HEADER: _ref("headers", SIGNATURE_HEADER),
        PUBKEY_HEADER: _ref("headers", PUBKEY_HEADER),
    }
    return response


def _public_get(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    parameters = [{"in": "header", "schema": s.NonceHeaderSchema}, *extra.pop("parameters", [])]
    bad_nonce = f"a malformed {NONCE_HEADER} header" + extra.pop("bad_request", "")
    responses = {"400": error(bad_nonce), **responses}
    return {
        "summary": summary,
        "parameters": parameters,
        "responses": {code: _signed(r) for code, r in responses.items()},
        **extra,
    }


@functools.cache
def public_document() -> dict[str, Any]:
    """The runtime's public listener: the routes it serves itself (the rest goes to the app)."""
    spec = new_spec(
        "Simple Enclave runtime: public listener",
        "The routes the runtime answers itself on its public listener (runtime.port); every "
        "other path is proxied to the app. Each answer carries an Ed25519 signature over "
        f"'simple-enclave-response-v2', the request's method and target (path and query as "
        f"sent), the status, the SHA-256 of the body and the request's {NONCE_HEADER} (see "
        "enclave_core.protocol.signing), once boot has made the key.",
    )
    spec.components.header(
        SIGNATURE_HEADER,
        {
            "description": "hex Ed25519 signature of the canonical string of this answer",
            "schema": {"type": "string", "pattern": "^[0-9a-f]{128}$"},
        },
    )
    spec.components.header(
        PUBKEY_HEADER,
        {
            "description": "hex Ed25519 public key; its SHA-256 is bound in the attestation",
            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        },
    )
    health = {
        "200": json_body(s.ReadySchema, "the runtime and the app are ready"),
        "503": json_body(s.NotReadySchema, "booting (stage) or degraded (error)"),
    }
    spec.path("/health", operations={"get": _public_get("The runtime's condition", health)})
    info = {"200": json_body(s.EnclaveInfoSchema, "this enclave's identity, keys and counters")}
    spec.path(
        "/v1/enclave-info",
        operations={"get": _public_get("Identity, keys and counters of the enclave", info)},
    )
    attestation = {
        "200": {
            "description": "a fresh attestation document binding the nonce, base64",
            "content": {TEXT: {"schema": {"type": "string", "pattern": s.BASE64_PATTERN}}},
        },
        "502": error("the NSM refused or failed"),
        "503": error("attestation is not available yet (boot has not made its keys)"),
    }
    spec.path(
        "/enclave/attestation",
        operations={
            "get": _public_get(
                "An attestation document with the caller's nonce (nitriding-compatible)",
                attestation,
                parameters=[{"in": "query", "schema": s.AttestationQuerySchema}],
                bad_request=", or a missing or malformed nonce",
            )
        },
    )
    reserved = {"404": error("always: the migration exists only on the control listener")}
    for path, what in (("/v1/export-key", "exported"), ("/v1/migration-key", "made")):
        spec.path(
            path,
            operations={
                "post": {
                    "summary": f"Reserved: never {what} from the public listener",
                    "responses": {code: _signed(r) for code, r in reserved.items()},
                }
            },
        )
    own = {"200": document_operation("this document")}
    spec.path(OPENAPI_PATH, operations={"get": _public_get("This OpenAPI document", own)})
    return render(spec)


# ------------------------------------------------------------------ control listener


@functools.cache
def control_document() -> dict[str, Any]:
    """The runtime's control listener (the supervisor's; never forwarded by ingress)."""
    spec = new_spec(
        "Simple Enclave runtime: control listener",
        "Reachable only from the parent instance (runtime.control_port): the watchdog's health "
        "check and the migration's migration-key and export-key.",
    )
    spec.path(
        "/health",
        operations={
            "get": {
                "summary": "The runtime's condition (for the watchdog)",
                "responses": {
                    "200": json_body(s.ReadySchema, "the runtime and the app are ready"),
                    "503": json_body(s.NotReadySchema, "booting (stage) or degraded (error)"),
                },
            }
        },
    )
    spec.path(
        "/v1/migration-key",
        operations={
            "post": {
                "summary": "Create the key for the successor image (migration step 2)",
                "description": "The old enclave creates the key itself, with its final policy "
                "in the CreateKey call: Decrypt only for the target PCR0 (and this image's PCR8 "
                "when signed), Encrypt only during the export window, no policy change and no "
                "grants. Asked again for the same migration id and target, it answers with the "
                "same key.",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": s.MigrationKeyRequestSchema}},
                },
                "responses": {
                    "200": json_body(s.MigrationKeySchema, "the key made for the successor"),
                    "400": error("a malformed or all-zero target, or a bad migration id"),
                    "403": error("the target is signed with another certificate"),
                    "409": error("the key made earlier for this migration is unusable"),
                    "413": error(f"the body exceeds {MAX_EXPORT_BODY} bytes"),
                    "500": error("the key this enclave made does not verify"),
                    "502": error("KMS or the secrets backend failed"),
                    "503": error("boot has not opened the secrets yet"),
                },
            }
        },
    )
    spec.path(
        "/v1/export-key",
        operations={
            "post": {
                "summary": "Re-encrypt the secrets for the migration's new key",
                "description": "Only to the key this enclave created for MigrationTargetPCR0 "
                "(Migration/KeyRecord), after checking it again (metadata, exact policy, no "
                "grants) and while its export window is open; writes the ciphertexts and the "
                "chain link that names them (Migration/Manifest).",
                "requestBody": {
                    "required": False,
                    "description": f"empty or {{}} (at most {MAX_EXPORT_BODY} bytes)",
                    "content": {JSON: {"schema": s.ExportKeyRequestSchema}},
                },
                "responses": {
                    "200": json_body(s.ExportResultSchema, "what was exported"),
                    "400": error("the body is neither empty nor {}"),
                    "403": error("the target key is not one this enclave made for the target"),
                    "404": error("the target key disappeared while exporting"),
                    "409": error("no migration in progress, or the key is unusable"),
                    "413": error(f"the body exceeds {MAX_EXPORT_BODY} bytes"),
                    "502": error("KMS or the secrets backend failed"),
                    "503": error("boot has not opened the secrets yet"),
                },
            }
        },
    )
    add_document_path(spec)
    return render(spec)


# ------------------------------------------------------------------ app API


def _app_op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An app API operation: Bearer token, and the middleware's 401, 403 and 503."""
    return {
        "summary": summary,
        **extra,
        "responses": {
            **responses,
            "401": error("no Bearer token"),
            "403": error("a wrong token"),
            "503": error(_NOT_READY),
        },
    }


def _json_request(schema: Any, description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": f"{description} (a JSON object of at most {MAX_JSON_BODY} bytes)",
        "content": {JSON: {"schema": schema}},
    }


def _path(schema: Any) -> dict[str, Any]:
    """A path parameter from its schema (apispec expands it; a fresh dict each time)."""
    return {"in": "path", "schema": schema}


_ETAG = {"ETag": {"description": "the object's version", "schema": {"type": "string"}}}


def _storage_item() -> dict[str, Any]:
    written = json_body(s.StorageWrittenSchema, "stored")
    written["headers"] = _ETAG
    read = {
        "description": "the object's bytes",
        "headers": _ETAG,
        "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
    }
    return {
        "put": _app_op(
            "Store an object (encrypted)",
            {
                "201": written,
                "400": error("a bad key or conditional header"),
                "412": error("the If-Match / If-None-Match condition does not hold"),
                "413": error(f"the body exceeds {MAX_STORAGE_BODY} bytes"),
                "502": error(_BACKEND),
            },
            parameters=[
                _path(s.StorageKeyPathSchema),
                {"in": "header", "schema": s.ConditionalHeadersSchema},
            ],
            requestBody={
                "required": True,
                "description": f"the object's bytes (at most {MAX_STORAGE_BODY})",
                "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
            },
        ),
        "get": _app_op(
            "Read an object",
            parameters=[_path(s.StorageKeyPathSchema)],
            responses={
                "200": read,
                "400": error("a bad key"),
                "404": error("no such object"),
                "500": error(_TAMPERED),
                "502": error(_BACKEND),
            },
        ),
        "delete": _app_op(
            "Delete an object",
            parameters=[_path(s.StorageKeyPathSchema)],
            responses={
                "200": json_body(s.StorageDeletedSchema, "deleted"),
                "400": error("a bad key"),
                "404": error("no such object"),
                "502": error(_BACKEND),
            },
        ),
    }


def _secret_item() -> dict[str, Any]:
    return {
        "put": _app_op(
            "Create or replace a dynamic secret",
            {
                "201": json_body(s.SecretWrittenSchema, "stored"),
                "400": error("a bad name, body or env_var (the description names the field)"),
                "409": error("changed concurrently; try again"),
                "413": error(f"the body exceeds {MAX_JSON_BODY} bytes"),
                "500": error(_TAMPERED),
                "502": error(_BACKEND),
            },
            parameters=[_path(s.SecretNamePathSchema)],
            requestBody=_json_request(s.SecretWriteSchema, "the value and its env_var"),
        ),
        "get": _app_op(
            "Read a dynamic secret with its value",
            parameters=[_path(s.SecretNamePathSchema)],
            responses={
                "200": json_body(s.SecretSchema, "the secret"),
                "400": error("a bad name"),
                "404": error("no such secret"),
                "500": error(_TAMPERED),
                "502": error(_BACKEND),
            },
        ),
        "delete": _app_op(
            "Delete a dynamic secret",
            parameters=[_path(s.SecretNamePathSchema)],
            responses={
                "200": json_body(s.SecretDeletedSchema, "deleted"),
                "400": error("a bad name"),
                "404": error("no such secret"),
                "502": error(_BACKEND),
            },
        ),
    }


def _pcr_op(summary: str, request: Any, answer: Any) -> dict[str, Any]:
    return _app_op(
        summary,
        {
            "200": json_body(answer, "done"),
            "400": error(
                "a bad body, or the NSM's InvalidArgument, InvalidIndex or InputTooLarge",
                s.NsmErrorSchema,
            ),
            "409": error("the PCR is locked (ReadOnlyIndex) or InvalidOperation", s.NsmErrorSchema),
            "413": error(f"the body exceeds {MAX_JSON_BODY} bytes"),
            "502": error("the NSM failed", s.NsmErrorSchema),
        },
        requestBody=_json_request(request, "the PCR"),
    )


@functools.cache
def app_document() -> dict[str, Any]:
    """The runtime's app API: storage, dynamic secrets and PCRs, behind the Bearer token."""
    spec = new_spec(
        "Simple Enclave runtime: app API",
        "For the app inside the enclave (loopback, runtime.app_api_port, never forwarded). "
        "Every call needs Authorization: Bearer $ENCLAVE_MGMT_TOKEN. Every error is JSON "
        "{title, description}; a bad field is named by its dotted path.",
        security=[{BEARER: []}],
    )
    add_bearer_scheme(spec, "the app's $ENCLAVE_MGMT_TOKEN (new at every boot)")
    spec.components.schema("Error", schema=ErrorSchema)
    spec.path(
        "/v1/storage",
        operations={
            "get": _app_op(
                "List the app's keys",
                {
                    "200": json_body(s.StorageKeysSchema, "the keys, sorted"),
                    "400": error("a bad prefix"),
                    "502": error(_BACKEND),
                },
                parameters=[{"in": "query", "schema": s.StorageListQuerySchema}],
            )
        },
    )
    spec.path("/v1/storage/{key}", operations=_storage_item())
    spec.path(
        "/v1/secrets",
        operations={
            "get": _app_op(
                "List the dynamic secrets, without their values",
                {"200": json_body(s.SecretListSchema, "the secrets"), "502": error(_BACKEND)},
            )
        },
    )
    spec.path("/v1/secrets/{name}", operations=_secret_item())
    spec.path(
        "/v1/extend-pcr",
        operations={
            "post": _pcr_op("Extend a PCR (16..31)", s.ExtendPcrSchema, s.PcrExtendedSchema)
        },
    )
    spec.path(
        "/v1/lock-pcr",
        operations={"post": _pcr_op("Lock a PCR (16..31)", s.LockPcrSchema, s.PcrLockedSchema)},
    )
    spec.path(
        OPENAPI_PATH,
        operations={
            "get": _app_op("This OpenAPI document", {"200": document_operation("this document")})
        },
    )
    return render(spec)
