"""The OpenAPI document of the supervisor's management API (:mod:`enclave_core.http.openapi`)."""

from __future__ import annotations

import functools
from typing import Any

from enclave_core.http.openapi import (
    BEARER,
    JSON,
    TEXT,
    add_bearer_scheme,
    add_document_path,
    error,
    json_body,
    new_spec,
    render,
)
from enclave_core.supervisor import schemas as s

_LAUNCHER = "the launcher failed (nitro-cli or the process launcher)"
_BACKENDS = "KMS or the secrets backend failed"


def _protected(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A mutating operation: the token in .enclave/supervisor/token, as a Bearer token."""
    return {
        "summary": summary,
        "security": [{BEARER: []}],
        **extra,
        "responses": {
            **responses,
            "401": error("no Bearer token"),
            "403": error("a wrong token"),
        },
    }


def _json_request(schema: Any, description: str, *, required: bool) -> dict[str, Any]:
    return {
        "required": required,
        "description": f"{description} (a JSON object, read up to {s.MAX_BODY} bytes)",
        "content": {JSON: {"schema": schema}},
    }


def _migration_paths(spec: Any) -> None:
    progress = s.MigrationProgressSchema
    # The schema-level rule (exactly one of eif and app_dir) joins the generated properties.
    spec.components.schema("MigrateRequest", s.ONE_IMAGE, schema=s.MigrateRequestSchema)
    spec.path(
        "/v1/migrate",
        operations={
            "post": _protected(
                "Start or resume the migration to a new image (README: Migration)",
                {
                    "200": json_body(progress, "that migration is already complete"),
                    "202": json_body(progress, "the steps run; follow GET /v1/migrate"),
                    "400": error("a bad body, or a pcr0 the new image does not measure to"),
                    "409": error("one is running, or an unfinished one targets another image"),
                    "500": error("the stored checkpoint is invalid"),
                    "502": error(_BACKENDS),
                },
                requestBody=_json_request(s.MigrateRequestSchema, "the new image", required=True),
            ),
            "get": {
                "summary": "The migration's progress",
                "responses": {
                    "200": json_body(progress, "status none before any migration"),
                    "500": error("the stored checkpoint is invalid"),
                    "502": error(_BACKENDS),
                },
            },
        },
    )
    spec.path(
        "/v1/schedule-key-deletion",
        operations={
            "post": _protected(
                "Schedule the deletion of the key named in MigrationOldKMSKeyID",
                {
                    "200": json_body(s.ScheduledDeletionSchema, "scheduled (or already gone)"),
                    "400": error("a bad body"),
                    "409": error("no old key, the key in use, or a migration is running"),
                    "502": error(_BACKENDS),
                },
                requestBody=_json_request(
                    s.ScheduleDeletionRequestSchema, "the waiting period", required=False
                ),
            )
        },
    )


@functools.cache
def supervisor_document(migration: bool = True) -> dict[str, Any]:
    """The management API; ``migration`` False leaves out the migration routes (tests' apps)."""
    spec = new_spec(
        "Simple Enclave supervisor: management API",
        "On the host, at supervisor.listen (loopback). Reading needs nothing; every POST needs "
        "the token in .enclave/supervisor/token as a Bearer token. Every error is JSON "
        "{title, description}; a bad field is named by its dotted path.",
    )
    add_bearer_scheme(spec, "the supervisor's token (.enclave/supervisor/token, mode 0600)")
    health = s.SupervisorHealthSchema
    spec.path(
        "/health",
        operations={
            "get": {
                "summary": "The launcher's and the watchdog's view of the enclave",
                "responses": {
                    "200": json_body(health, "running"),
                    "503": json_body(health, "stopped, starting or error"),
                    "500": error(_LAUNCHER),
                },
            }
        },
    )
    spec.path(
        "/v1/enclave-info",
        operations={
            "get": {
                "summary": "The runtime's enclave-info plus the host's facts",
                "responses": {
                    "200": json_body(s.SupervisorEnclaveInfoSchema, "the enclave and its host"),
                    "500": error(_LAUNCHER),
                    "503": error("the runtime does not answer"),
                },
            }
        },
    )
    spec.path(
        "/metrics",
        operations={
            "get": {
                "summary": "Prometheus text exposition",
                "responses": {
                    "200": {
                        "description": "the runtime's counters, enclave_up, "
                        "enclave_restarts_total and the API's request metrics",
                        "content": {TEXT: {"schema": {"type": "string"}}},
                    },
                    "500": error(_LAUNCHER),
                },
            }
        },
    )
    for verb, done in (("start", "started"), ("stop", "stopped")):
        spec.path(
            f"/v1/{verb}",
            operations={
                "post": _protected(
                    f"{verb.capitalize()} the enclave",
                    {
                        "200": json_body(health, f"{done}: the new /health body"),
                        "409": error(f"it is already {done}"),
                        "500": error(_LAUNCHER),
                    },
                )
            },
        )
    if migration:
        _migration_paths(spec)
    add_document_path(spec)
    return render(spec)
