"""``s3`` storage: objects in an Amazon S3 bucket, with S3's own conditional writes.

Options (``storage.options``): ``bucket`` (required), ``prefix`` (``""``; ``apps/hello`` becomes
``apps/hello/``), ``endpoint_url``, ``region``, ``connect_timeout_s`` (5), ``read_timeout_s``
(20), ``max_attempts`` (5), ``page_size`` (1000), ``credentials`` and ``imds_endpoint`` (README,
"Backends and their options"). A key ``k`` is the object ``{prefix}{k}``; ``If-Match`` and
``If-None-Match: *`` go to S3's conditional PutObject (docs/architecture.md, "Storage and secrets
backends"). Errors name the operation and the object, never its contents.
"""

from __future__ import annotations

from typing import Any, ClassVar

from botocore.exceptions import ClientError
from loguru import logger
from marshmallow import ValidationError as SchemaError
from marshmallow import fields, validate

from enclave_core import hookimpl
from enclave_core.aws.clients import (
    AwsClients,
    AwsCredentialOptions,
    aws_errors,
    error_code,
)
from enclave_core.errors import (
    AccessDenied,
    BackendError,
    EnclaveError,
    NotFound,
    PreconditionFailed,
    ValidationError,
)
from enclave_core.plugin.interfaces import BackendContext, StoredObject
from enclave_core.plugin.registry import BackendRegistry

MAX_KEY_BYTES = 1024  # S3's limit for a full object key, in UTF-8 bytes
STAR_ATTEMPTS = 5  # If-Match "*" retries when the object changes between Head and Put

S3_ERRORS: dict[str, type[EnclaveError]] = {
    "403": AccessDenied,  # HEAD answers carry only the status code
    "AccessDenied": AccessDenied,
    "InvalidAccessKeyId": AccessDenied,
    "SignatureDoesNotMatch": AccessDenied,
    "NoSuchBucket": BackendError,
    "KeyTooLongError": ValidationError,
    "InvalidRequest": ValidationError,
}
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_CONFLICT = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


def _bare_etag(value: str) -> str:
    """An ETag without ``W/`` and quotes (callers may pass either form)."""
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _check_prefix(value: str) -> None:
    """The ``prefix`` option is a relative key prefix."""
    if value.startswith("/") or ".." in value.split("/") or "\x00" in value:
        raise SchemaError("must be a relative key prefix (no leading '/', no '..')")


class S3Storage:
    """Objects in ``s3://{bucket}/{prefix}`` (see the module docstring)."""

    name: ClassVar[str] = "s3"

    class Options(AwsCredentialOptions):
        """``storage.options`` of the s3 backend."""

        bucket = fields.String(required=True, validate=validate.Length(min=3, max=63))
        prefix = fields.String(load_default="", validate=_check_prefix)
        endpoint_url = fields.String(load_default=None, allow_none=True)
        region = fields.String(load_default=None, allow_none=True)
        connect_timeout_s = fields.Float(load_default=5.0, validate=validate.Range(min=0.1))
        read_timeout_s = fields.Float(load_default=20.0, validate=validate.Range(min=0.1))
        max_attempts = fields.Integer(load_default=5, validate=validate.Range(min=1, max=20))
        page_size = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=1000))

    def __init__(
        self, clients: AwsClients, *, bucket: str, prefix: str = "", page_size: int = 1000
    ) -> None:
        self._clients = clients
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.page_size = page_size

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> S3Storage:
        """Build the backend; no session, client or credential is touched until the first call."""
        clients = AwsClients.from_options(options, context, {"s3": options.get("endpoint_url")})
        return cls(
            clients,
            bucket=options["bucket"],
            prefix=options.get("prefix", ""),
            page_size=options.get("page_size", 1000),
        )

    @property
    def client(self) -> Any:
        """The boto3 S3 client (built on first use)."""
        return self._clients.client("s3")

    # ------------------------------------------------------------------ helpers

    def _object_key(self, key: str) -> str:
        """Return the S3 key of ``key``; refuse what the local backend refuses too."""
        if not isinstance(key, str) or not key or key.startswith("/") or "\x00" in key:
            raise ValidationError(f"s3 storage: invalid key {key!r}")
        if any(seg in ("", ".", "..") for seg in key.split("/")):
            raise ValidationError(f"s3 storage: invalid key {key!r}")
        full = self.prefix + key
        if len(full.encode("utf-8")) > MAX_KEY_BYTES:
            raise ValidationError(f"s3 storage: key {key!r} is too long for S3")
        return full

    def _where(self, full: str) -> str:
        return f"object s3://{self.bucket}/{full}"

    def _head_etag(self, full: str) -> str | None:
        """The object's ETag, or None if absent (a missing bucket is an error, not absence)."""
        with aws_errors("S3", "HeadObject", self._where(full), codes=S3_ERRORS):
            try:
                return str(self.client.head_object(Bucket=self.bucket, Key=full)["ETag"])
            except ClientError as exc:
                if error_code(exc) not in _MISSING:
                    raise
        # A HEAD answer has no body, so "no such bucket" is also a bare 404: ask the bucket.
        with aws_errors("S3", "HeadBucket", f"bucket {self.bucket}", codes=S3_ERRORS):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    raise BackendError(
                        f"S3 HeadObject of {self._where(full)} failed: "
                        f"the bucket {self.bucket} does not exist"
                    ) from None
                raise
        return None

    # ------------------------------------------------------------------ Storage

    def get(self, key: str) -> StoredObject:
        """Return the object at ``key``; NotFound when it is missing."""
        full = self._object_key(key)
        with aws_errors("S3", "GetObject", self._where(full), codes=S3_ERRORS):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    raise NotFound(f"s3 storage: object {key!r} not found") from None
                raise
            body = response["Body"]
            try:
                data: bytes = body.read()  # reading the stream can fail too: still in aws_errors
            finally:
                body.close()
        return StoredObject(data=data, etag=str(response["ETag"]))

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Store ``data`` at ``key``; return its ETag.

        ``if_match`` (an ETag, quoted or not, or ``*`` for "exists") and ``if_none_match`` are
        checked by S3 atomically with the write; a failed check raises PreconditionFailed and
        writes nothing.
        """
        full = self._object_key(key)
        if if_match is not None and if_none_match:
            # "exists" and "does not exist" at once: S3 refuses the pair, the answer is 412 anyway.
            raise PreconditionFailed(
                f"s3 storage: object {key!r}: If-Match and If-None-Match cannot both hold"
            )
        if if_match is not None and _bare_etag(if_match) == "*":
            return self._put_if_exists(key, full, bytes(data))
        condition: dict[str, str] = {}
        if if_none_match:
            condition["IfNoneMatch"] = "*"
        if if_match is not None:
            condition["IfMatch"] = f'"{_bare_etag(if_match)}"'
        return self._put(key, full, bytes(data), condition)

    def _put(self, key: str, full: str, data: bytes, condition: dict[str, str]) -> str:
        with aws_errors("S3", "PutObject", self._where(full), codes=S3_ERRORS, sensitive=(data,)):
            try:
                response = self.client.put_object(
                    Bucket=self.bucket, Key=full, Body=data, **condition
                )
            except ClientError as exc:
                code = error_code(exc)
                # With If-Match, a missing object is a failed precondition (S3 answers 404).
                if code in _CONFLICT or ("IfMatch" in condition and code in _MISSING):
                    raise PreconditionFailed(
                        f"s3 storage: object {key!r} "
                        + ("already exists" if "IfNoneMatch" in condition else "has changed")
                        + f" (S3 {code or 'conflict'})"
                    ) from None
                raise
        logger.debug("storage put", backend="s3", key=full, size=len(data))
        return str(response["ETag"])

    def _put_if_exists(self, key: str, full: str, data: bytes) -> str:
        """``If-Match: *``: write only over an existing object, whatever its ETag."""
        for _ in range(STAR_ATTEMPTS):
            etag = self._head_etag(full)
            if etag is None:
                raise PreconditionFailed(f"s3 storage: object {key!r} does not exist")
            try:
                return self._put(key, full, data, {"IfMatch": etag})
            except PreconditionFailed:
                continue  # replaced or deleted meanwhile: look again
        raise PreconditionFailed(f"s3 storage: object {key!r} kept changing (If-Match: *)")

    def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        full = self._object_key(key)
        if self._head_etag(full) is None:
            return False
        with aws_errors("S3", "DeleteObject", self._where(full), codes=S3_ERRORS):
            self.client.delete_object(Bucket=self.bucket, Key=full)
        logger.debug("storage delete", backend="s3", key=full)
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Return every key starting with ``prefix``, sorted (all pages of ListObjectsV2)."""
        if not isinstance(prefix, str):
            raise ValidationError("s3 storage: the list prefix must be a string")
        start = self.prefix + prefix
        keys: list[str] = []
        where = f"prefix s3://{self.bucket}/{start}"
        with aws_errors("S3", "ListObjectsV2", where, codes=S3_ERRORS):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start, PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                for item in page.get("Contents", []):
                    if item["Key"] != self.prefix:  # an object named like the prefix is no key
                        keys.append(item["Key"][len(self.prefix) :])
        return sorted(keys)


@hookimpl
def enclave_register_storage(registry: BackendRegistry[Any]) -> None:
    """Register the ``s3`` storage backend."""
    registry.add(S3Storage)
