"""``ssm`` secrets: parameters in AWS Systems Manager Parameter Store.

Options (``secrets.options``): ``endpoint_url``, ``region``, ``connect_timeout_s`` (5),
``read_timeout_s`` (20), ``max_attempts`` (5), ``kms_key_id`` (``SecureString`` under that key;
default plain ``String``), ``tier`` (``auto``), ``page_size`` (10), ``credentials`` and
``imds_endpoint`` (README, "Backends and their options"). A name ``n`` is the parameter
``/{prefix}/{name}/n`` (docs/architecture.md lists them under "Parameters the enclave keeps", and
says why ``String`` and how ``auto`` picks a tier under "Storage and secrets backends").
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from botocore.exceptions import ClientError
from loguru import logger
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
    ValidationError,
)
from enclave_core.plugin.interfaces import BackendContext
from enclave_core.plugin.registry import BackendRegistry

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")
MAX_NAME = 1011  # SSM's limit for a full parameter name
STANDARD_MAX = 4096  # value bytes the Standard tier holds
ADVANCED_MAX = 8192  # value bytes the Advanced tier holds
TIERS = ("auto", "Standard", "Advanced", "Intelligent-Tiering")

SSM_ERRORS: dict[str, type[EnclaveError]] = {
    "ParameterNotFound": NotFound,
    "AccessDeniedException": AccessDenied,
    "InvalidKeyId": ValidationError,
    "HierarchyLevelLimitExceededException": ValidationError,
    "HierarchyTypeMismatchException": ValidationError,
    "ParameterPatternMismatchException": ValidationError,
    "UnsupportedParameterType": ValidationError,
    "ParameterMaxVersionLimitExceeded": BackendError,
    "ParameterLimitExceeded": BackendError,
    "TooManyUpdates": BackendError,
}


def _is_downgrade_refusal(exc: ClientError) -> bool:
    """Whether SSM refused to move an Advanced parameter back to the Standard tier."""
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return error_code(exc) == "ValidationException" and "downgrade" in message


class SsmSecrets:
    """Parameters of one app under ``/{prefix}/{name}/`` in SSM (see the module docstring)."""

    name: ClassVar[str] = "ssm"

    class Options(AwsCredentialOptions):
        """``secrets.options`` of the ssm backend."""

        endpoint_url = fields.String(load_default=None, allow_none=True)
        region = fields.String(load_default=None, allow_none=True)
        connect_timeout_s = fields.Float(load_default=5.0, validate=validate.Range(min=0.1))
        read_timeout_s = fields.Float(load_default=20.0, validate=validate.Range(min=0.1))
        max_attempts = fields.Integer(load_default=5, validate=validate.Range(min=1, max=20))
        kms_key_id = fields.String(load_default=None, allow_none=True)
        tier = fields.String(load_default="auto", validate=validate.OneOf(TIERS))
        page_size = fields.Integer(load_default=10, validate=validate.Range(min=1, max=10))

    def __init__(
        self,
        clients: AwsClients,
        *,
        prefix: str,
        app_name: str,
        kms_key_id: str | None = None,
        tier: str = "auto",
        page_size: int = 10,
    ) -> None:
        self._clients = clients
        self.base = f"/{prefix}/{app_name}/"
        self.kms_key_id = kms_key_id
        self.tier = tier
        self.page_size = page_size

    def __repr__(self) -> str:
        return f"SsmSecrets({self.base})"

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> SsmSecrets:
        """Build the backend for ``/{context.prefix}/{context.name}/``; no session, client or
        credential is touched until the first call."""
        clients = AwsClients.from_options(options, context, {"ssm": options.get("endpoint_url")})
        return cls(
            clients,
            prefix=context.prefix,
            app_name=context.name,
            kms_key_id=options.get("kms_key_id"),
            tier=options.get("tier", "auto"),
            page_size=options.get("page_size", 10),
        )

    @property
    def client(self) -> Any:
        """The boto3 SSM client (built on first use)."""
        return self._clients.client("ssm")

    def _full(self, name: str) -> str:
        """Return the full parameter name of ``name``; refuse malformed names."""
        if not isinstance(name, str) or not _NAME.match(name) or ".." in name.split("/"):
            raise ValidationError(f"ssm secrets: invalid parameter name {name!r}")
        full = self.base + name
        if len(full) > MAX_NAME:
            raise ValidationError(f"ssm secrets: parameter name {name!r} is too long")
        return full

    def _tier(self, full: str, size: int) -> str:
        """The tier to write a value of ``size`` bytes with; refuse what no tier can hold."""
        limit = STANDARD_MAX if self.tier == "Standard" else ADVANCED_MAX
        if size > limit:
            raise ValidationError(
                f"ssm secrets: the value of {full} is {size} bytes, over the {limit}-byte limit "
                f"of the {'Standard' if limit == STANDARD_MAX else 'Advanced'} tier"
            )
        if self.tier != "auto":
            return self.tier
        return "Advanced" if size > STANDARD_MAX else "Standard"

    # ------------------------------------------------------------------ Secrets

    def get(self, name: str) -> str | None:
        """Return the value of ``name``, or None when it is absent."""
        full = self._full(name)
        with aws_errors("SSM", "GetParameter", f"parameter {full}", codes=SSM_ERRORS):
            try:
                response = self.client.get_parameter(Name=full, WithDecryption=True)
            except ClientError as exc:
                if error_code(exc) == "ParameterNotFound":
                    return None
                raise
        return str(response["Parameter"]["Value"])

    def put(self, name: str, value: str) -> None:
        """Create or overwrite ``name`` (each write is atomic in SSM)."""
        self._write(name, value, overwrite=True)

    def create(self, name: str, value: str) -> bool:
        """Store ``name`` only if it is absent; return whether it was stored.

        PutParameter without ``Overwrite`` is SSM's own create-if-absent: of concurrent calls
        exactly one succeeds, the others get ParameterAlreadyExists.
        """
        return self._write(name, value, overwrite=False)

    def _write(self, name: str, value: str, *, overwrite: bool) -> bool:
        full = self._full(name)
        if not isinstance(value, str):
            raise ValidationError(f"ssm secrets: the value of {full} must be a string")
        if not value:
            raise ValidationError(f"ssm secrets: SSM cannot store an empty value ({full})")
        raw = value.encode("utf-8")
        tier = self._tier(full, len(raw))
        params: dict[str, Any] = {"Name": full, "Value": value, "Overwrite": overwrite}
        if self.kms_key_id:
            params.update(Type="SecureString", KeyId=self.kms_key_id)
        else:
            params["Type"] = "String"
        with aws_errors(
            "SSM", "PutParameter", f"parameter {full}", codes=SSM_ERRORS, sensitive=(raw,)
        ):
            try:
                self.client.put_parameter(Tier=tier, **params)
            except ClientError as exc:
                if not overwrite and error_code(exc) == "ParameterAlreadyExists":
                    return False
                if not (self.tier == "auto" and tier == "Standard" and _is_downgrade_refusal(exc)):
                    raise
                # An Advanced parameter stays Advanced: write the small value there.
                tier = "Advanced"
                self.client.put_parameter(Tier=tier, **params)
        logger.debug("parameter put", backend="ssm", parameter=full, tier=tier)
        return True

    def delete(self, name: str) -> bool:
        """Delete ``name``; return whether it existed."""
        full = self._full(name)
        with aws_errors("SSM", "DeleteParameter", f"parameter {full}", codes=SSM_ERRORS):
            try:
                self.client.delete_parameter(Name=full)
            except ClientError as exc:
                if error_code(exc) == "ParameterNotFound":
                    return False
                raise
        logger.debug("parameter deleted", backend="ssm", parameter=full)
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Return this app's relative names starting with ``prefix``, sorted."""
        if not isinstance(prefix, str):
            raise ValidationError("ssm secrets: the list prefix must be a string")
        # Ask only under the deepest complete folder of the prefix, then filter the rest.
        folder = prefix.rpartition("/")[0]
        if folder and not (_NAME.match(folder) and ".." not in folder.split("/")):
            return []  # no parameter can live under a folder SSM would refuse
        path = (self.base + folder).rstrip("/")
        start = self.base + prefix
        names: list[str] = []
        with aws_errors("SSM", "GetParametersByPath", f"path {path}", codes=SSM_ERRORS):
            pages = self.client.get_paginator("get_parameters_by_path").paginate(
                Path=path,
                Recursive=True,
                WithDecryption=False,  # names only: no KMS call for SecureString values
                PaginationConfig={"PageSize": self.page_size},
            )
            for page in pages:
                names.extend(
                    p["Name"][len(self.base) :]
                    for p in page.get("Parameters", [])
                    if p["Name"].startswith(start)
                )
        return sorted(names)


@hookimpl
def enclave_register_secrets(registry: BackendRegistry[Any]) -> None:
    """Register the ``ssm`` secrets backend."""
    registry.add(SsmSecrets)
