"""The management API's request and response schemas (README: Supervisor management API).

:mod:`.api` loads the request bodies with them (:func:`enclave_core.http.schemas.load_request`);
:mod:`.apidoc` builds the supervisor's OpenAPI document from the same classes.
"""

from __future__ import annotations

import re
from typing import Any

import marshmallow
from marshmallow import fields, validate, validates_schema

from enclave_core.http.schemas import RequestSchema
from enclave_core.runtime.schemas import EnclaveInfoSchema
from enclave_core.supervisor.migration.checkpoint import TOTAL

#: The JSON bodies of the POSTs are read up to this size.
MAX_BODY = 64 * 1024
PCR0_PATTERN = "^[0-9a-fA-F]{96}$"
DAYS_ERROR = "must be a whole number from 7 to 30"
HEALTH_STATUSES = ("running", "stopped", "starting", "error")
PROBE_STATUSES = ("ready", "initializing", "degraded", "unreachable", "invalid")
MIGRATION_STATUSES = ("none", "running", "done", "failed", "rolled_back", "interrupted")
#: What MigrateRequestSchema._one_image checks, for the OpenAPI document.
ONE_IMAGE = {"oneOf": [{"required": ["eif"]}, {"required": ["app_dir"]}]}


#: An absolute path without control characters (a NUL would fail every file call).
ABSOLUTE_PATH_PATTERN = r"^/[^\x00-\x1f\x7f]*$"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control_characters(value: str) -> None:
    if _CONTROL.search(value):
        raise marshmallow.ValidationError("must not hold control characters")


def _absolute_path(description: str) -> fields.String:
    return fields.String(
        validate=[
            validate.Regexp("^/", error="must be an absolute path"),
            _no_control_characters,
        ],
        metadata={"description": description, "pattern": ABSOLUTE_PATH_PATTERN},
    )


# ------------------------------------------------------------------ requests


class MigrateRequestSchema(RequestSchema):
    """``POST /v1/migrate``: the new image, by exactly one of ``eif`` and ``app_dir``."""

    eif = _absolute_path("the new enclave image file, an absolute path on the host")
    app_dir = _absolute_path("development: the new app folder, an absolute path")
    pcr0 = fields.String(
        validate=validate.Regexp(
            re.compile(r"[0-9a-fA-F]{96}\Z"), error="must be 96 hex characters"
        ),
        metadata={"description": "the PCR0 the new image must measure to", "pattern": PCR0_PATTERN},
    )

    @validates_schema
    def _one_image(self, data: dict[str, Any], **_: Any) -> None:
        if ("eif" in data) == ("app_dir" in data):
            raise marshmallow.ValidationError(
                "name the new image with exactly one of 'eif' and 'app_dir'"
            )


class ScheduleDeletionRequestSchema(RequestSchema):
    """``POST /v1/schedule-key-deletion``: the waiting period (an empty body means 7 days)."""

    days = fields.Integer(
        strict=True,
        load_default=7,
        validate=validate.Range(7, 30, error=DAYS_ERROR),
        error_messages={"invalid": DAYS_ERROR},
        metadata={"description": "days before the key is deleted (7 to 30, default 7)"},
    )


# ------------------------------------------------------------------ responses


class LastExitSchema(marshmallow.Schema):
    """Why the last enclave ended."""

    exit_code = fields.Integer(required=True, allow_none=True)
    signal = fields.String(required=True, allow_none=True, metadata={"example": "SIGKILL"})
    reason = fields.String(required=True)
    log_tail = fields.List(fields.String(), required=True)
    timestamp = fields.String(required=True)


class ProbeSchema(marshmallow.Schema):
    """The last answer of the runtime's control ``/health``."""

    status = fields.String(required=True, validate=validate.OneOf(PROBE_STATUSES))
    detail = fields.String(required=True)


class SupervisorHealthSchema(marshmallow.Schema):
    """``GET /health`` (and the answer of start and stop): the launcher's view."""

    status = fields.String(required=True, validate=validate.OneOf(HEALTH_STATUSES))
    enclave_id = fields.String(required=True, allow_none=True)
    enclave_cid = fields.Integer(required=True, allow_none=True)
    state = fields.String(required=True, allow_none=True)
    restarts = fields.Integer(required=True, validate=validate.Range(min=0))
    last_exit = fields.Nested(LastExitSchema, required=True, allow_none=True)
    error = fields.String(
        required=True, allow_none=True, metadata={"description": "why the launcher failed"}
    )
    runtime = fields.Nested(ProbeSchema, required=True, allow_none=True)
    timestamp = fields.String(required=True)


class HostSchema(marshmallow.Schema):
    """The host's facts in the supervisor's enclave-info."""

    instance_type = fields.String(required=True)
    enclave_id = fields.String(required=True, allow_none=True)
    enclave_cid = fields.Integer(required=True, allow_none=True)
    cpu_count = fields.Integer(required=True)
    memory_mib = fields.Integer(required=True)
    restarts = fields.Integer(required=True)
    supervisor_version = fields.String(required=True)


class SupervisorEnclaveInfoSchema(EnclaveInfoSchema):
    """``GET /v1/enclave-info``: the runtime's enclave-info plus ``host``."""

    host = fields.Nested(HostSchema, required=True)


class MigrationStepSchema(marshmallow.Schema):
    """One finished step of a migration."""

    step = fields.Integer(required=True)
    msg = fields.String(required=True)


class MigrationProgressSchema(marshmallow.Schema):
    """``GET /v1/migrate`` and the answer of ``POST /v1/migrate``."""

    id = fields.String(metadata={"description": "the migration's id"})
    step = fields.Integer(
        required=True, validate=validate.Range(0, TOTAL), metadata={"description": "last done"}
    )
    total = fields.Integer(required=True, validate=validate.Range(TOTAL, TOTAL))
    status = fields.String(required=True, validate=validate.OneOf(MIGRATION_STATUSES))
    msg = fields.String(required=True)
    target_pcr0 = fields.String()
    new_key_id = fields.String(allow_none=True)
    steps = fields.List(fields.Nested(MigrationStepSchema))


class ScheduledDeletionSchema(marshmallow.Schema):
    """``POST /v1/schedule-key-deletion`` 200."""

    key_id = fields.String(required=True)
    state = fields.String(required=True, metadata={"example": "PendingDeletion"})
    deletion_date = fields.String(required=True, allow_none=True)
