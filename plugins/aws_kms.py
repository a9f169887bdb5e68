"""``aws`` KMS: AWS Key Management Service through boto3, with the Nitro ``Recipient`` flow.

Options (``kms.options``): ``endpoint_url``, ``sts_endpoint_url``, ``region``, ``key_id``,
``connect_timeout_s`` (5), ``read_timeout_s`` (20), ``max_attempts`` (5), ``credentials`` and
``imds_endpoint`` (:class:`enclave_core.aws.clients.AwsCredentialOptions`); the README's
"Backends and their options" section explains each. With a Recipient, an answer that still
carries a plaintext is refused; policies are read back strictly
(:func:`enclave_core.kmspolicy.evaluation.parse_policy_text`); AWS errors become project errors.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from loguru import logger
from marshmallow import fields, validate

from enclave_core import hookimpl
from enclave_core.aws.clients import (
    AwsClients,
    AwsCredentialOptions,
    aws_errors,
    principal_arn,
)
from enclave_core.errors import (
    AccessDenied,
    BackendError,
    CryptoError,
    EnclaveError,
    InvalidKeyState,
    NotFound,
    ValidationError,
)
from enclave_core.kmspolicy.evaluation import parse_policy_text
from enclave_core.plugin.interfaces import BackendContext, GrantInfo, KeyInfo, KmsResult, Recipient
from enclave_core.plugin.registry import BackendRegistry

MAX_PLAINTEXT = 4096  # the KMS Encrypt limit
MAX_DATA_KEY = 1024  # the GenerateDataKey NumberOfBytes limit

KMS_ERRORS: dict[str, type[EnclaveError]] = {
    "AccessDeniedException": AccessDenied,
    "KMSInvalidStateException": InvalidKeyState,
    "DisabledException": InvalidKeyState,
    "NotFoundException": NotFound,
    "InvalidCiphertextException": CryptoError,
    "IncorrectKeyException": CryptoError,
    "MalformedPolicyDocumentException": ValidationError,
    "ValidationException": ValidationError,
    "InvalidGrantIdException": ValidationError,
    "InvalidGrantTokenException": ValidationError,
    "InvalidArnException": ValidationError,
}


def _check_context(operation: str, context: dict[str, str] | None) -> dict[str, str]:
    context = context or {}
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        raise ValidationError(
            f"KMS {operation}: the encryption context must map strings to strings"
        )
    return dict(context)


def _iso(moment: Any) -> str | None:
    if isinstance(moment, datetime):
        return moment.astimezone(UTC).isoformat(timespec="seconds")
    return None


def _policy_text(policy: dict[str, Any] | str) -> str:
    """What KMS takes as ``Policy``: JSON text, sent as given when it already is text."""
    return policy if isinstance(policy, str) else json.dumps(policy)


def _grant(entry: Mapping[str, Any], key_id: str) -> GrantInfo:
    """A ListGrants entry as a GrantInfo."""
    constraints = entry.get("Constraints") or {}
    subset = constraints.get("EncryptionContextSubset")
    equals = constraints.get("EncryptionContextEquals")
    return GrantInfo(
        grant_id=entry["GrantId"],
        key_id=entry.get("KeyId") or key_id,
        grantee_principal=entry.get("GranteePrincipal") or "",
        operations=tuple(entry.get("Operations") or ()),
        retiring_principal=entry.get("RetiringPrincipal") or None,
        name=entry.get("Name") or "",
        encryption_context_subset=dict(subset) if subset is not None else None,
        encryption_context_equals=dict(equals) if equals is not None else None,
    )


class AwsKms:
    """AWS KMS keys, policies, encryption contexts and Recipient answers, through boto3."""

    name: ClassVar[str] = "aws"

    class Options(AwsCredentialOptions):
        """``kms.options`` of the aws backend (``credentials``, ``imds_endpoint`` inherited)."""

        endpoint_url = fields.String(load_default=None, allow_none=True)
        sts_endpoint_url = fields.String(load_default=None, allow_none=True)
        region = fields.String(load_default=None, allow_none=True)
        key_id = fields.String(load_default=None, allow_none=True)
        connect_timeout_s = fields.Float(load_default=5.0, validate=validate.Range(min=0.1))
        read_timeout_s = fields.Float(load_default=20.0, validate=validate.Range(min=0.1))
        max_attempts = fields.Integer(load_default=5, validate=validate.Range(min=1, max=20))

    def __init__(self, clients: AwsClients, *, key_id: str | None = None) -> None:
        self._clients = clients
        self.key_id = key_id
        self._caller: str | None = None
        self._caller_lock = threading.Lock()

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> AwsKms:
        """Build the backend; no session, client or credential is touched until the first call."""
        clients = AwsClients.from_options(
            options,
            context,
            {"kms": options.get("endpoint_url"), "sts": options.get("sts_endpoint_url")},
        )
        return cls(clients, key_id=options.get("key_id"))

    @property
    def client(self) -> Any:
        """The boto3 KMS client (built on first use)."""
        return self._clients.client("kms")

    @staticmethod
    def _info(meta: dict[str, Any]) -> KeyInfo:
        """KeyMetadata as KeyInfo; a field KMS leaves out stays None ("not said")."""
        multi_region = meta.get("MultiRegion")
        return KeyInfo(
            key_id=meta["KeyId"],
            arn=meta["Arn"],
            state=meta.get("KeyState", "Enabled" if meta.get("Enabled") else "Disabled"),
            description=meta.get("Description", "") or "",
            deletion_date=_iso(meta.get("DeletionDate")),
            origin=meta.get("Origin"),
            multi_region=bool(multi_region) if multi_region is not None else None,
            custom_key_store_id=meta.get("CustomKeyStoreId") or None,
            key_spec=meta.get("KeySpec") or meta.get("CustomerMasterKeySpec"),
            key_usage=meta.get("KeyUsage"),
            key_manager=meta.get("KeyManager"),
        )

    # ------------------------------------------------------------------ key management

    def create_key(
        self,
        *,
        description: str = "",
        policy: dict[str, Any] | str | None = None,
        bypass_lockout_safety_check: bool = False,
        origin: str = "AWS_KMS",
        multi_region: bool = False,
        custom_key_store_id: str | None = None,
    ) -> KeyInfo:
        """Create a symmetric encryption key, with ``policy`` or AWS's default policy.

        A ``policy`` (a document, or its JSON text sent as given) goes in the CreateKey call
        itself (``Policy``), so the key never exists without it; ``bypass_lockout_safety_check``
        sends ``BypassPolicyLockoutSafetyCheck`` for a policy that leaves the caller unable to
        change it (a key locked to a PCR0). The caller needs only ``kms:CreateKey`` in IAM for
        this, no ``kms:PutKeyPolicy``. ``origin``, ``multi_region`` and ``custom_key_store_id``
        are sent only when they differ from a plain single-Region ``AWS_KMS`` key.
        """
        params: dict[str, Any] = {
            "Description": description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeySpec": "SYMMETRIC_DEFAULT",
        }
        if policy is not None:
            params["Policy"] = _policy_text(policy)
            params["BypassPolicyLockoutSafetyCheck"] = bypass_lockout_safety_check
        if origin != "AWS_KMS":
            params["Origin"] = origin
        if multi_region:
            params["MultiRegion"] = True
        if custom_key_store_id is not None:
            params["CustomKeyStoreId"] = custom_key_store_id
        with aws_errors("KMS", "CreateKey", "a new key", codes=KMS_ERRORS):
            meta = self.client.create_key(**params)["KeyMetadata"]
        info = self._info(meta)
        logger.bind(key_id=info.key_id).info("KMS key created")
        return info

    def describe_key(self, key_id: str) -> KeyInfo:
        """Return the key's metadata; NotFound if it does not exist."""
        with aws_errors("KMS", "DescribeKey", f"key {key_id}", codes=KMS_ERRORS):
            return self._info(self.client.describe_key(KeyId=key_id)["KeyMetadata"])

    def get_key_policy(self, key_id: str) -> dict[str, Any]:
        """Return the key policy (the ``default`` policy, the only one KMS keys have).

        :raises ValidationError: the stored text is not strict JSON (a duplicate key at any
            depth, NaN, not an object): it is not read last-wins.
        """
        with aws_errors("KMS", "GetKeyPolicy", f"key {key_id}", codes=KMS_ERRORS):
            text = self.client.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]
        try:
            return parse_policy_text(text)
        except ValidationError as exc:
            raise ValidationError(f"KMS GetKeyPolicy of key {key_id}: {exc}") from None

    def put_key_policy(
        self,
        key_id: str,
        policy: dict[str, Any] | str,
        *,
        bypass_lockout_safety_check: bool = False,
    ) -> None:
        """Replace the key policy (a document, or its JSON text sent as given);
        ``bypass_lockout_safety_check`` when the new policy locks out the caller (as a policy
        that allows Decrypt only to an attested enclave does)."""
        with aws_errors("KMS", "PutKeyPolicy", f"key {key_id}", codes=KMS_ERRORS):
            self.client.put_key_policy(
                KeyId=key_id,
                PolicyName="default",
                Policy=_policy_text(policy),
                BypassPolicyLockoutSafetyCheck=bypass_lockout_safety_check,
            )
        logger.bind(key_id=key_id).info(
            "KMS key policy replaced", bypass=bypass_lockout_safety_check
        )

    def schedule_key_deletion(self, key_id: str, pending_window_days: int = 7) -> KeyInfo:
        """Schedule deletion after 7..30 days; the key is unusable from now on."""
        if isinstance(pending_window_days, bool) or not isinstance(pending_window_days, int):
            raise ValidationError("KMS ScheduleKeyDeletion: the window must be whole days")
        if not 7 <= pending_window_days <= 30:
            raise ValidationError(
                f"KMS ScheduleKeyDeletion of key {key_id}: the pending window must be 7..30 "
                f"days, not {pending_window_days}"
            )
        with aws_errors("KMS", "ScheduleKeyDeletion", f"key {key_id}", codes=KMS_ERRORS):
            self.client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=pending_window_days)
        info = self.describe_key(key_id)
        logger.bind(key_id=info.key_id).info(
            "KMS key deletion scheduled", deletion_date=info.deletion_date
        )
        return info

    # ------------------------------------------------------------------ grants

    def list_grants(self, key_id: str) -> list[GrantInfo]:
        """Every grant on the key (ListGrants, following ``NextMarker`` over all pages)."""
        grants: list[GrantInfo] = []
        with aws_errors("KMS", "ListGrants", f"key {key_id}", codes=KMS_ERRORS):
            for page in self.client.get_paginator("list_grants").paginate(KeyId=key_id):
                grants.extend(_grant(entry, key_id) for entry in page.get("Grants", []))
        return grants

    def create_grant(
        self,
        key_id: str,
        *,
        grantee_principal: str,
        operations: Sequence[str],
        retiring_principal: str | None = None,
        name: str = "",
        constraints: Mapping[str, Mapping[str, str]] | None = None,
    ) -> str:
        """Create a grant (CreateGrant) and return its grant id.

        :param constraints: ``{"EncryptionContextSubset": {...}}`` or
            ``{"EncryptionContextEquals": {...}}``.
        """
        params: dict[str, Any] = {
            "KeyId": key_id,
            "GranteePrincipal": grantee_principal,
            "Operations": list(operations),
        }
        if retiring_principal is not None:
            params["RetiringPrincipal"] = retiring_principal
        if name:
            params["Name"] = name
        if constraints:
            params["Constraints"] = {k: dict(v) for k, v in constraints.items()}
        with aws_errors("KMS", "CreateGrant", f"key {key_id}", codes=KMS_ERRORS):
            grant_id: str = self.client.create_grant(**params)["GrantId"]
        logger.bind(key_id=key_id).info(
            "KMS grant created", grant_id=grant_id, operations=list(operations)
        )
        return grant_id

    def retire_grant(self, key_id: str, grant_id: str) -> None:
        """Retire a grant (RetireGrant). KMS wants the key's ARN here; a key id is turned
        into its ARN with DescribeKey first."""
        arn = key_id if key_id.startswith("arn:") else self.describe_key(key_id).arn
        with aws_errors("KMS", "RetireGrant", f"key {key_id}", codes=KMS_ERRORS):
            self.client.retire_grant(KeyId=arn, GrantId=grant_id)
        logger.bind(key_id=key_id).info("KMS grant retired", grant_id=grant_id)

    def revoke_grant(self, key_id: str, grant_id: str) -> None:
        """Revoke a grant (RevokeGrant)."""
        with aws_errors("KMS", "RevokeGrant", f"key {key_id}", codes=KMS_ERRORS):
            self.client.revoke_grant(KeyId=key_id, GrantId=grant_id)
        logger.bind(key_id=key_id).info("KMS grant revoked", grant_id=grant_id)

    # ------------------------------------------------------------------ cryptography

    def encrypt(self, key_id: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        """Encrypt 1..4096 bytes under the key, binding ``context``; return the ciphertext blob."""
        if not 1 <= len(plaintext) <= MAX_PLAINTEXT:
            raise ValidationError(f"KMS Encrypt of key {key_id}: plaintext must be 1..4096 bytes")
        params = {
            "KeyId": key_id,
            "Plaintext": bytes(plaintext),
            "EncryptionContext": _check_context("Encrypt", context),
        }
        with aws_errors(
            "KMS", "Encrypt", f"key {key_id}", codes=KMS_ERRORS, sensitive=(bytes(plaintext),)
        ):
            blob: bytes = self.client.encrypt(**params)["CiphertextBlob"]
        return blob

    def _answer(
        self, operation: str, key_id: str, response: dict[str, Any], recipient: Recipient | None
    ) -> KmsResult:
        """Build the result, refusing an answer that ignored the Recipient."""
        plaintext = response.get("Plaintext") or None
        sealed = response.get("CiphertextForRecipient") or None
        if recipient is not None and (sealed is None or plaintext is not None):
            what = (
                "carries a plaintext" if plaintext is not None else "has no CiphertextForRecipient"
            )
            raise BackendError(
                f"KMS {operation} of key {key_id}: a Recipient was sent but the answer {what} "
                "(the endpoint does not support the Nitro Recipient flow)"
            )
        if recipient is None and plaintext is None:
            raise BackendError(f"KMS {operation} of key {key_id}: the answer has no plaintext")
        return KmsResult(
            key_id=response.get("KeyId") or key_id,
            plaintext=None if recipient is not None else plaintext,
            ciphertext_for_recipient=sealed if recipient is not None else None,
            ciphertext_blob=response.get("CiphertextBlob"),
        )

    @staticmethod
    def _recipient(params: dict[str, Any], recipient: Recipient | None) -> None:
        if recipient is not None:
            params["Recipient"] = {
                "KeyEncryptionAlgorithm": recipient.key_encryption_algorithm,
                "AttestationDocument": recipient.attestation_document,
            }

    def decrypt(
        self,
        key_id: str,
        ciphertext: bytes,
        context: dict[str, str],
        recipient: Recipient | None = None,
    ) -> KmsResult:
        """Decrypt a ciphertext blob; ``context`` must equal the one it was made with.

        With ``recipient``, the result has ``ciphertext_for_recipient`` and no plaintext.
        """
        params: dict[str, Any] = {
            "CiphertextBlob": bytes(ciphertext),
            "EncryptionContext": _check_context("Decrypt", context),
        }
        if key_id:
            params["KeyId"] = key_id
        self._recipient(params, recipient)
        with aws_errors(
            "KMS",
            "Decrypt",
            f"key {key_id or '(from the blob)'}",
            codes=KMS_ERRORS,
            sensitive=(bytes(ciphertext),),
        ):
            response = self.client.decrypt(**params)
        return self._answer("Decrypt", key_id, response, recipient)

    def generate_data_key(
        self,
        key_id: str,
        context: dict[str, str],
        *,
        number_of_bytes: int = 32,
        recipient: Recipient | None = None,
    ) -> KmsResult:
        """Generate 1..1024 random bytes under the key; return the blob and the plaintext
        (or, with ``recipient``, the CiphertextForRecipient)."""
        if isinstance(number_of_bytes, bool) or not 1 <= number_of_bytes <= MAX_DATA_KEY:
            raise ValidationError(
                f"KMS GenerateDataKey of key {key_id}: number_of_bytes must be 1..{MAX_DATA_KEY}"
            )
        params: dict[str, Any] = {
            "KeyId": key_id,
            "EncryptionContext": _check_context("GenerateDataKey", context),
            "NumberOfBytes": number_of_bytes,
        }
        self._recipient(params, recipient)
        with aws_errors("KMS", "GenerateDataKey", f"key {key_id}", codes=KMS_ERRORS):
            response = self.client.generate_data_key(**params)
        return self._answer("GenerateDataKey", key_id, response, recipient)

    # ------------------------------------------------------------------ identity

    def caller_arn(self) -> str:
        """The IAM user or role this backend calls KMS as (STS GetCallerIdentity, cached)."""
        with self._caller_lock:
            if self._caller is None:
                with aws_errors("STS", "GetCallerIdentity", "the caller"):
                    arn = self._clients.client("sts").get_caller_identity()["Arn"]
                self._caller = principal_arn(arn)
            return self._caller


@hookimpl
def enclave_register_kms(registry: BackendRegistry[Any]) -> None:
    """Register the ``aws`` KMS backend."""
    registry.add(AwsKms)
