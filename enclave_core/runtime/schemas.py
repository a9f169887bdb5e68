"""The runtime's request and response schemas (README: HTTP APIs), for validation and OpenAPI.

Request schemas are loaded by the handlers of :mod:`.appapi` and :mod:`.own_routes` through
:func:`enclave_core.http.schemas.load_request`; response schemas describe what they answer. Both
feed the OpenAPI documents of :mod:`enclave_core.runtime.apidoc`. The name rules themselves are
the ``check_*`` functions of :mod:`.validate`; ``metadata["pattern"]`` states them for the
documents as far as a regular expression can.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

import marshmallow
from marshmallow import fields, validate, validates_schema

from enclave_core.config import ENV_VAR_RE
from enclave_core.errors import ValidationError
from enclave_core.http.schemas import ErrorSchema, ParamsSchema, RequestSchema
from enclave_core.metrics import COUNTERS
from enclave_core.protocol.signing import MAX_NONCE_CHARS, NONCE_HEADER, NONCE_RE
from enclave_core.runtime.state import STAGES
from enclave_core.runtime.validate import (
    MAX_KEY_CHARS,
    SECRET_NAME_RE,
    USER_PCRS,
    check_env_var,
    check_secret_name,
    check_storage_key,
    check_storage_prefix,
)

MAX_NONCE_BYTES = 1024
#: Body limits: a stored object, a JSON request of the app API, an export-key request.
MAX_STORAGE_BODY = 10 * 1024 * 1024
MAX_JSON_BODY = 64 * 1024
MAX_EXPORT_BODY = 1024
HEX_RE = re.compile(r"[0-9a-fA-F]*")
#: A storage key as a pattern: no leading '/', no '.', '..' or empty segment, not under
#: 'secrets/', no control character or backslash (check_storage_key also wants printable).
STORAGE_KEY_PATTERN = (
    r"^(?!/)(?!secrets(/|$))(?!(.*/)?\.\.?(/|$))(?!.*//)(?!.*/$)[^\x00-\x1f\x7f-\x9f\\]{1,512}$"
)
PREFIX_PATTERN = r"^(?!/)[^\x00-\x1f\x7f-\x9f\\]*$"
SECRET_NAME_PATTERN = r"^(?!.*\.\.)" + SECRET_NAME_RE.pattern.lstrip("^")
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
PCR_VALUE_PATTERN = r"^[0-9a-f]{96}$"
PCR_ERROR = f"must be an integer from {USER_PCRS.start} to {USER_PCRS.stop - 1}"


def _rule(check: Callable[[Any], Any]) -> Callable[[Any], None]:
    """A marshmallow validator from one of validate.py's checks (same rule, same message)."""

    def run(value: Any) -> None:
        try:
            check(value)
        except ValidationError as exc:
            raise marshmallow.ValidationError(str(exc)) from None

    return run


def check_nonce_hex(text: str) -> None:
    """The attestation ``nonce``: 1 to 1024 bytes, two hex digits each."""
    if HEX_RE.fullmatch(text) is None or len(text) % 2:
        raise marshmallow.ValidationError("must be hexadecimal, two digits per byte")
    if not 1 <= len(text) // 2 <= MAX_NONCE_BYTES:
        raise marshmallow.ValidationError(f"must be 1 to {MAX_NONCE_BYTES} bytes")


def check_base64(text: str) -> None:
    """Standard base64 with its padding (what ``base64.b64decode(validate=True)`` accepts)."""
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise marshmallow.ValidationError("is not valid base64") from None


def _pcr() -> fields.Integer:
    return fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(USER_PCRS.start, USER_PCRS.stop - 1, error=PCR_ERROR),
        error_messages={"invalid": PCR_ERROR},
        metadata={"description": "a PCR the app may use (16 to 31)"},
    )


# ------------------------------------------------------------------ parameters


class NonceHeaderSchema(ParamsSchema):
    """``X-Attestation-Nonce``: bound into the signature of the runtime's own answers."""

    nonce = fields.String(
        data_key=NONCE_HEADER,
        metadata={
            "description": "a nonce the response signature binds (checked by the signing "
            "middleware; a malformed one is a signed 400)",
            "pattern": NONCE_RE.pattern.join("^$"),
            "maxLength": MAX_NONCE_CHARS,
        },
    )


class AttestationQuerySchema(ParamsSchema):
    """``GET /enclave/attestation?nonce=<hex>``."""

    nonce = fields.String(
        required=True,
        validate=check_nonce_hex,
        metadata={
            "description": f"1 to {MAX_NONCE_BYTES} bytes in hexadecimal",
            "pattern": f"^(?:[0-9a-fA-F]{{2}}){{1,{MAX_NONCE_BYTES}}}$",
        },
    )


class StorageListQuerySchema(ParamsSchema):
    """``GET /v1/storage?prefix=``."""

    prefix = fields.String(
        load_default="",
        validate=_rule(check_storage_prefix),
        metadata={
            "description": "list only the keys starting with this (printable, no leading '/', "
            "no backslash)",
            "maxLength": MAX_KEY_CHARS,
            "pattern": PREFIX_PATTERN,
        },
    )


class StorageKeyPathSchema(ParamsSchema):
    """The ``{key}`` of ``/v1/storage/{key}``; it may contain '/'."""

    key = fields.String(
        required=True,
        validate=_rule(check_storage_key),
        metadata={
            "description": f"1 to {MAX_KEY_CHARS} printable characters; '/' separates "
            "segments; no leading '/', no '.', '..' or empty segment, no backslash, nothing "
            "under 'secrets/'",
            "minLength": 1,
            "maxLength": MAX_KEY_CHARS,
            "pattern": STORAGE_KEY_PATTERN,
        },
    )


class ConditionalHeadersSchema(ParamsSchema):
    """``If-Match`` / ``If-None-Match: *`` of a storage PUT (at most one of them)."""

    if_match = fields.String(
        data_key="If-Match",
        metadata={
            "description": "write only if the object's current ETag is this one (not together "
            "with If-None-Match: 400)"
        },
    )
    if_none_match = fields.String(
        data_key="If-None-Match",
        validate=validate.OneOf(["*"], error="only If-None-Match: * is supported"),
        metadata={
            "description": "'*': write only if the object does not exist yet (not together "
            "with If-Match: 400)"
        },
    )

    @validates_schema
    def _not_both(self, data: dict[str, Any], **_: Any) -> None:
        if "if_match" in data and "if_none_match" in data:
            raise marshmallow.ValidationError("use either If-Match or If-None-Match, not both")


class SecretNamePathSchema(ParamsSchema):
    """The ``{name}`` of ``/v1/secrets/{name}``."""

    name = fields.String(
        required=True,
        validate=_rule(check_secret_name),
        metadata={"description": "a dynamic secret's name", "pattern": SECRET_NAME_PATTERN},
    )


# ------------------------------------------------------------------ request bodies


class SecretWriteSchema(RequestSchema):
    """``PUT /v1/secrets/{name}``: the value and, optionally, the app's variable for it."""

    value = fields.String(required=True, metadata={"description": "the secret value"})
    env_var = fields.String(
        allow_none=True,
        validate=_rule(check_env_var),
        metadata={
            "description": "environment variable the app gets it in at its next start (not "
            "PORT nor ENCLAVE_*, nor a static secret's or another dynamic secret's)",
            "pattern": ENV_VAR_RE,
        },
    )


class ExtendPcrSchema(RequestSchema):
    """``POST /v1/extend-pcr``."""

    pcr = _pcr()
    data = fields.String(
        required=True,
        validate=check_base64,
        metadata={"description": "the bytes to extend with, base64", "pattern": BASE64_PATTERN},
    )


class LockPcrSchema(RequestSchema):
    """``POST /v1/lock-pcr``."""

    pcr = _pcr()


class ExportKeyRequestSchema(RequestSchema):
    """``POST /v1/export-key``: an empty body or ``{}``."""


PCR_HEX_PATTERN = r"^(0x)?[0-9a-fA-F]{96}$"


class MigrationKeyRequestSchema(RequestSchema):
    """``POST /v1/migration-key``: the target image and the migration it belongs to."""

    target_pcr0 = fields.String(
        required=True,
        validate=validate.Regexp(PCR_HEX_PATTERN),
        metadata={"description": "the new image's PCR0 (96 hex characters, never all zero)"},
    )
    target_pcr8 = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Regexp(PCR_HEX_PATTERN),
        metadata={"description": "the new image's PCR8 when it is signed (checked, not trusted)"},
    )
    migration_id = fields.String(
        required=True,
        validate=validate.Regexp(r"^[a-z0-9-]{1,64}$"),
        metadata={"description": "the migration's id (a second call with it returns the same key)"},
    )


# ------------------------------------------------------------------ responses


class ReadySchema(marshmallow.Schema):
    """``/health`` 200."""

    status = fields.String(required=True, validate=validate.OneOf(["ready"]))


class NotReadySchema(marshmallow.Schema):
    """``/health`` 503: booting (with the stage) or degraded (with the reason)."""

    status = fields.String(required=True, validate=validate.OneOf(["initializing", "degraded"]))
    stage = fields.String(
        validate=validate.OneOf(STAGES), metadata={"description": "the boot stage running"}
    )
    error = fields.String(metadata={"description": "why the runtime is degraded"})


#: The runtime's counters (README: HTTP APIs), all from 0.
MetricsSchema = marshmallow.Schema.from_dict(
    {name: fields.Integer(required=True, validate=validate.Range(min=0)) for name in COUNTERS},
    name="MetricsSchema",
)


class ChainLinkSchema(marshmallow.Schema):
    """One migration chain link: the attested record the old enclave wrote at export."""

    kind = fields.String(required=True, validate=validate.OneOf(["link"]))
    body = fields.Dict(
        required=True,
        metadata={
            "description": "app, migration, index, previous_link, from_pcr0, from_pcr8, to_pcr0, "
            "to_pcr8, key_id, key_arn, policy_sha256, entries"
        },
    )
    attestation = fields.String(
        required=True,
        metadata={"description": "base64 document whose user_data binds the body's SHA-256"},
    )


class EnclaveInfoSchema(marshmallow.Schema):
    """``GET /v1/enclave-info`` (fields not known yet are null)."""

    name = fields.String(required=True)
    version = fields.String(required=True, metadata={"description": "the runtime's version"})
    pcr0 = fields.String(required=True, allow_none=True, metadata={"pattern": "^[0-9a-f]{96}$"})
    attestation_pubkey = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "hex Ed25519 key signing the own answers",
            "pattern": "^[0-9a-f]{64}$",
        },
    )
    tls_cert_sha256 = fields.String(
        required=True, allow_none=True, metadata={"pattern": "^[0-9a-f]{64}$"}
    )
    kms_key_id = fields.String(required=True, allow_none=True)
    previous_pcr0 = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "'genesis', or the PCR0 of the image this one migrated from"},
    )
    previous_pcr0_attestation = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "base64 attestation document of the newest chain link"},
    )
    pcr8 = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "PCR8 of a signed image, else null", "pattern": "^[0-9a-f]{96}$"},
    )
    key_origin = fields.String(
        required=True,
        allow_none=True,
        validate=validate.OneOf(["genesis", "migration"]),
        metadata={"description": "whether the KMS key was made for a first boot or by a migration"},
    )
    migration_chain = fields.List(
        fields.Nested(ChainLinkSchema),
        required=True,
        allow_none=True,
        metadata={"description": "the attested links from the first image, oldest first"},
    )
    migration_chain_complete = fields.Boolean(
        required=True,
        allow_none=True,
        metadata={"description": "whether every link back to the first image verified"},
    )
    dynamic_secrets = fields.Integer(required=True, allow_none=True)
    metrics = fields.Nested(MetricsSchema, required=True)


class StorageKeysSchema(marshmallow.Schema):
    """``GET /v1/storage``."""

    keys = fields.List(fields.String(), required=True)


class StorageWrittenSchema(marshmallow.Schema):
    """``PUT /v1/storage/{key}`` 201."""

    key = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["stored"]))


class StorageDeletedSchema(marshmallow.Schema):
    """``DELETE /v1/storage/{key}`` 200."""

    key = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["deleted"]))


class SecretSummarySchema(marshmallow.Schema):
    """One entry of ``GET /v1/secrets``: never the value."""

    name = fields.String(required=True)
    env_var = fields.String()
    created_at = fields.String(required=True)
    updated_at = fields.String(required=True)


class SecretSchema(SecretSummarySchema):
    """``GET /v1/secrets/{name}``: with its value."""

    value = fields.String(required=True)


class SecretListSchema(marshmallow.Schema):
    """``GET /v1/secrets``."""

    secrets = fields.List(fields.Nested(SecretSummarySchema), required=True)


class SecretWrittenSchema(marshmallow.Schema):
    """``PUT /v1/secrets/{name}`` 201."""

    name = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["stored"]))


class SecretDeletedSchema(marshmallow.Schema):
    """``DELETE /v1/secrets/{name}`` 200."""

    name = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["deleted"]))


class PcrExtendedSchema(marshmallow.Schema):
    """``POST /v1/extend-pcr`` 200: the PCR's new value."""

    pcr = fields.Integer(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["extended"]))
    value = fields.String(required=True, metadata={"pattern": PCR_VALUE_PATTERN})


class PcrLockedSchema(marshmallow.Schema):
    """``POST /v1/lock-pcr`` 200."""

    pcr = fields.Integer(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["locked"]))


class NsmErrorSchema(ErrorSchema):
    """An error of the PCR routes: the NSM's error ``code`` when the module refused."""

    code = fields.String(metadata={"description": "the NSM's error code (ReadOnlyIndex...)"})


class ExportResultSchema(marshmallow.Schema):
    """``POST /v1/export-key`` 200."""

    exported = fields.List(fields.String(), required=True)
    pcr0 = fields.String(required=True)
    new_key_id = fields.String(required=True)
    link = fields.String(
        required=True, metadata={"description": "SHA-256 of the chain link written"}
    )


class MigrationKeySchema(marshmallow.Schema):
    """``POST /v1/migration-key`` 200: the key the old enclave created for its successor."""

    key_id = fields.String(required=True)
    key_arn = fields.String(required=True)
    target_pcr0 = fields.String(required=True)
    target_pcr8 = fields.String(required=True, allow_none=True)
    export_until = fields.String(
        required=True, metadata={"description": "the end of the export window (UTC)"}
    )
    migration = fields.String(required=True)
