"""``local`` KMS: symmetric keys in the state directory that behave like AWS KMS for enclaves.

Options (``kms.options``): ``path`` (default ``.enclave/kms``), ``principal`` (the IAM ARN this
backend calls as) and ``root_pem`` (the one root Recipient documents must chain to; default the
simulated NSM's ``dev-root.pem``). Every call evaluates the key policy and grants as AWS does
(:mod:`enclave_core.kmspolicy.evaluation`), models key origin and multi-Region keys, and answers a
Recipient with a ``CiphertextForRecipient``; keys are stored by :mod:`enclave_core.crypto.keyfiles`.
Details: docs/architecture.md, "KMS: the local KMS and the aws backend".
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from loguru import logger
from marshmallow import Schema, fields, validate

from enclave_core import hookimpl
from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.crypto.keyfiles import MATERIAL_AAD, KeyDirectory, context_bytes, now_iso
from enclave_core.crypto.recipient_checks import VerifiedRecipient, verify_recipient
from enclave_core.errors import (
    AccessDenied,
    AttestationError,
    CryptoError,
    InvalidKeyState,
    NotFound,
    ValidationError,
)
from enclave_core.kmspolicy.conditions import principal_matches
from enclave_core.kmspolicy.evaluation import (
    GRANT_OPERATIONS,
    Decision,
    RequestContext,
    authorize,
    default_policy,
    evaluate,
    grant_narrows,
    validate_policy,
)
from enclave_core.plugin.interfaces import BackendContext, GrantInfo, KeyInfo, KmsResult, Recipient
from enclave_core.plugin.registry import BackendRegistry

ACCOUNT = "000000000000"
DEFAULT_PRINCIPAL = f"arn:aws:iam::{ACCOUNT}:role/enclave"
MAX_PLAINTEXT = 4096  # the AWS KMS Encrypt limit
__all__ = ["ACCOUNT", "DEFAULT_PRINCIPAL", "MATERIAL_AAD", "LocalKms"]
_ARN = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:\S+$")
_GRANT_NAME = re.compile(r"^[a-zA-Z0-9:/_-]{0,256}$")
#: Grant operations that take no encryption context, so no constraint can apply to them.
_NO_CONTEXT_OPERATIONS = ("DescribeKey", "RetireGrant")
_CONSTRAINTS = ("EncryptionContextSubset", "EncryptionContextEquals")
_KEY_STORE_ORIGINS = ("AWS_CLOUDHSM", "EXTERNAL_KEY_STORE")


class LocalKms:
    """Keys on disk with encryption contexts, key states, evaluated policies and Recipient."""

    name: ClassVar[str] = "local"

    class Options(Schema):
        """``kms.options`` of the local backend."""

        path = fields.String(load_default=".enclave/kms")
        principal = fields.String(
            load_default=DEFAULT_PRINCIPAL, validate=validate.Regexp(_ARN.pattern)
        )
        root_pem = fields.String(load_default=None, allow_none=True)

    def __init__(
        self,
        directory: Path,
        *,
        region: str = "us-east-1",
        principal: str = DEFAULT_PRINCIPAL,
        root_pem: Path | None = None,
    ) -> None:
        """:param root_pem: the trusted attestation root; None refuses every Recipient."""
        self.keys = KeyDirectory(Path(directory), region=region, account=ACCOUNT)
        self.directory = self.keys.directory
        self.region = region
        self.principal = principal
        self.root_pem = Path(root_pem) if root_pem is not None else None

    @classmethod
    def from_options(cls, options: dict[str, Any], context: BackendContext) -> LocalKms:
        """Build the backend; paths resolve against enclave.yaml's folder."""
        root = options.get("root_pem")
        return cls(
            context.resolve(options["path"]),
            region=context.region,
            principal=options.get("principal", DEFAULT_PRINCIPAL),
            root_pem=context.resolve(root) if root else context.state_dir / "dev-root.pem",
        )

    def caller_arn(self) -> str:
        """The IAM role ARN this backend calls as (the ``principal`` option)."""
        return self.principal

    # ------------------------------------------------------------------ authorization

    def _decide(
        self, record: dict[str, Any], action: str, context: RequestContext | None = None
    ) -> Decision:
        """The key policy and the key's grants on ``action`` by this caller, for this key."""
        return authorize(
            record["policy"],
            self.keys.grants(record),
            action=action,
            principal=self.principal,
            context=context or RequestContext(),
            resource=record["arn"],
        )

    def _policy_decision(
        self, record: dict[str, Any], action: str, context: RequestContext | None = None
    ) -> Decision:
        """The key policy alone (actions no grant can give, and the grant checks' own rules)."""
        return evaluate(
            record["policy"],
            action=action,
            principal=self.principal,
            context=context or RequestContext(),
            resource=record["arn"],
        )

    def _deny(self, record: dict[str, Any], action: str, reason: str) -> AccessDenied:
        return AccessDenied(
            f"local KMS: {action} on key {record['key_id']} denied for {self.principal}: {reason}"
        )

    def _authorize(
        self, record: dict[str, Any], action: str, context: RequestContext | None = None
    ) -> None:
        decision = self._decide(record, action, context)
        if not decision.allowed:
            raise self._deny(record, action, decision.reason)

    def _authorized(self, key_id: str, action: str) -> dict[str, Any]:
        record = self.keys.load(key_id)
        self._authorize(record, action)
        return record

    @staticmethod
    def _require_enabled(record: dict[str, Any]) -> None:
        if record["state"] != "Enabled":
            raise InvalidKeyState(f"local KMS: key {record['key_id']} is {record['state']}")

    def _update(
        self, key_id: str, action: str, allowed_from: tuple[str, ...], **changes: Any
    ) -> KeyInfo:
        """Authorize ``action``, check the state is one of ``allowed_from``, apply ``changes``."""
        with self.keys.locked():
            record = self._authorized(key_id, action)
            if record["state"] not in allowed_from:
                raise InvalidKeyState(
                    f"local KMS: key {record['key_id']} is {record['state']} ({action} refused)"
                )
            record.update(changes)
            self.keys.save(record)
        return self.keys.info(record)

    def key_ids(self) -> list[str]:
        """Return the ids of every key in the directory, sorted."""
        return self.keys.key_ids()

    # ------------------------------------------------------------------ key management

    @staticmethod
    def _policy(policy: dict[str, Any] | str, what: str) -> dict[str, Any]:
        """A policy document or its JSON text, checked; refused as KMS refuses a bad one."""
        try:
            return validate_policy(policy)
        except ValidationError as exc:
            raise ValidationError(f"MalformedPolicyDocumentException: {what}: {exc}") from None

    @staticmethod
    def _origin(origin: str, multi_region: bool, custom_key_store_id: str | None) -> str:
        """The key's origin after CreateKey's rules for key stores and imported material."""
        if custom_key_store_id is None:
            if origin in _KEY_STORE_ORIGINS:
                raise ValidationError(f"local KMS CreateKey: origin {origin} needs a key store")
            return origin
        if not isinstance(custom_key_store_id, str) or not custom_key_store_id:
            raise ValidationError("local KMS CreateKey: the custom key store id must be a string")
        if multi_region:
            raise ValidationError("local KMS CreateKey: a custom key store key is single-Region")
        if origin == "AWS_KMS":
            return "AWS_CLOUDHSM"
        if origin not in _KEY_STORE_ORIGINS:
            raise ValidationError(
                f"local KMS CreateKey: origin {origin} cannot be used with a custom key store"
            )
        return origin

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
        """Create a key with ``policy`` (default: account root) and, usually, fresh material.

        A given ``policy`` (a document or its JSON text) is checked as :meth:`put_key_policy`
        checks one (validity, and the lockout safety check unless
        ``bypass_lockout_safety_check``) and is in force from the key's first moment, as with AWS
        CreateKey's ``Policy``.

        :param origin: ``AWS_KMS``; ``EXTERNAL`` for a key in ``PendingImport`` without material
            until :meth:`import_key_material`.
        :param multi_region: record the key as multi-Region (``mrk-`` id); replicas are not
            modelled.
        :param custom_key_store_id: create the key in this custom key store: origin
            ``AWS_CLOUDHSM`` (or ``EXTERNAL_KEY_STORE`` if asked for), single-Region.
        """
        stored_policy = (
            default_policy(ACCOUNT) if policy is None else self._policy(policy, "CreateKey")
        )
        record = self.keys.new_record(
            description=description,
            policy=stored_policy,
            origin=self._origin(origin, multi_region, custom_key_store_id),
            multi_region=bool(multi_region),
            custom_key_store_id=custom_key_store_id,
        )
        if policy is not None and not bypass_lockout_safety_check:
            self._refuse_lockout(stored_policy, "CreateKey", record["arn"])
        with self.keys.locked():
            self.keys.save(record)
        logger.bind(key_id=record["key_id"]).info("local KMS key created", origin=record["origin"])
        return self.keys.info(record)

    def describe_key(self, key_id: str) -> KeyInfo:
        """Return the key's metadata (``kms:DescribeKey``); NotFound if it does not exist."""
        return self.keys.info(self._authorized(key_id, "kms:DescribeKey"))

    def get_key_policy(self, key_id: str) -> dict[str, Any]:
        """Return the key policy document (``kms:GetKeyPolicy``)."""
        policy: dict[str, Any] = self._authorized(key_id, "kms:GetKeyPolicy")["policy"]
        return policy

    def put_key_policy(
        self,
        key_id: str,
        policy: dict[str, Any] | str,
        *,
        bypass_lockout_safety_check: bool = False,
    ) -> None:
        """Replace the key policy (``kms:PutKeyPolicy``), with AWS's lockout safety check.

        ``policy`` is a document or its JSON text; the key's grants stay as they are.
        """
        new_policy = self._policy(policy, f"PutKeyPolicy on key {key_id}")
        with self.keys.locked():
            record = self._authorized(key_id, "kms:PutKeyPolicy")
            if not bypass_lockout_safety_check:
                self._refuse_lockout(new_policy, f"key {record['key_id']}", record["arn"])
            record["policy"] = new_policy
            self.keys.save(record)
        logger.bind(key_id=record["key_id"]).info("local KMS key policy replaced")

    def _refuse_lockout(self, policy: dict[str, Any], what: str, arn: str) -> None:
        """AWS's lockout safety check: the policy must still let the caller put a policy."""
        again = evaluate(
            policy,
            action="kms:PutKeyPolicy",
            principal=self.principal,
            context=RequestContext(),
            resource=arn,
        )
        if not again.allowed:
            raise ValidationError(
                f"MalformedPolicyDocumentException: {what}: the new key policy will not allow "
                "you to update the key policy in the future"
            )

    def import_key_material(self, key_id: str, material: bytes) -> KeyInfo:
        """Import 32 bytes of key material into an ``EXTERNAL`` key (``kms:ImportKeyMaterial``).

        A ``PendingImport`` key becomes ``Enabled`` with exactly that material; a key that has
        material accepts only the same material again (``IncorrectKeyMaterialException``
        otherwise). AWS's wrapping of the material with a public key and an import token is not
        modelled: the material is passed as it is.
        """
        if not isinstance(material, bytes | bytearray) or len(material) != 32:
            raise ValidationError(
                f"local KMS ImportKeyMaterial on key {key_id}: the material must be 32 bytes"
            )
        with self.keys.locked():
            record = self._authorized(key_id, "kms:ImportKeyMaterial")
            kid = record["key_id"]
            if record.get("origin", "AWS_KMS") != "EXTERNAL":
                raise ValidationError(
                    f"UnsupportedOperationException: local KMS key {kid} does not have origin "
                    "EXTERNAL"
                )
            if record["state"] not in ("PendingImport", "Enabled", "Disabled"):
                raise InvalidKeyState(f"local KMS: key {kid} is {record['state']}")
            if record.get("material"):
                if not self.keys.has_material(record, bytes(material)):
                    raise CryptoError(
                        f"IncorrectKeyMaterialException: local KMS key {kid} has other material"
                    )
                return self.keys.info(record)
            self.keys.import_material(record, bytes(material))
            record["state"] = "Enabled"
            self.keys.save(record)
        logger.bind(key_id=kid).info("local KMS key material imported")
        return self.keys.info(record)

    def enable_key(self, key_id: str) -> KeyInfo:
        """Enable a disabled key (``kms:EnableKey``)."""
        return self._update(key_id, "kms:EnableKey", ("Enabled", "Disabled"), state="Enabled")

    def disable_key(self, key_id: str) -> KeyInfo:
        """Disable a key (``kms:DisableKey``): it can no longer encrypt or decrypt."""
        return self._update(key_id, "kms:DisableKey", ("Enabled", "Disabled"), state="Disabled")

    def schedule_key_deletion(self, key_id: str, pending_window_days: int = 7) -> KeyInfo:
        """Schedule deletion after 7..30 days (``kms:ScheduleKeyDeletion``); unusable from now."""
        if isinstance(pending_window_days, bool) or not isinstance(pending_window_days, int):
            raise ValidationError("local KMS: the pending window must be a whole number of days")
        if not 7 <= pending_window_days <= 30:
            raise ValidationError(
                f"local KMS: the pending window must be 7..30 days, not {pending_window_days}"
            )
        when = datetime.now(UTC) + timedelta(days=pending_window_days)
        info = self._update(
            key_id,
            "kms:ScheduleKeyDeletion",
            ("Enabled", "Disabled", "PendingImport"),
            state="PendingDeletion",
            deletion_date=when.isoformat(timespec="seconds"),
        )
        logger.bind(key_id=info.key_id).info(
            "local KMS key deletion scheduled", deletion_date=info.deletion_date
        )
        return info

    def cancel_key_deletion(self, key_id: str) -> KeyInfo:
        """Cancel a scheduled deletion (``kms:CancelKeyDeletion``); the key becomes Disabled
        (``PendingImport`` if it never had material)."""
        with self.keys.locked():
            record = self._authorized(key_id, "kms:CancelKeyDeletion")
            if record["state"] != "PendingDeletion":
                raise InvalidKeyState(
                    f"local KMS: key {record['key_id']} is {record['state']} "
                    "(kms:CancelKeyDeletion refused)"
                )
            record["state"] = "Disabled" if record.get("material") else "PendingImport"
            record["deletion_date"] = None
            self.keys.save(record)
        return self.keys.info(record)

    # ------------------------------------------------------------------ grants

    @staticmethod
    def _grant_operations(operations: Sequence[str]) -> tuple[str, ...]:
        if isinstance(operations, str) or not operations:
            raise ValidationError("local KMS CreateGrant: operations must be a non-empty list")
        unknown = [op for op in operations if op not in GRANT_OPERATIONS]
        if unknown:
            raise ValidationError(
                f"local KMS CreateGrant: {unknown[0]!r} is not a grant operation of a symmetric "
                "encryption key"
            )
        return tuple(dict.fromkeys(operations))

    @staticmethod
    def _grant_constraints(
        constraints: Mapping[str, Mapping[str, str]] | None, operations: tuple[str, ...]
    ) -> dict[str, dict[str, str]]:
        if not constraints:
            return {}
        if not isinstance(constraints, Mapping) or len(constraints) != 1:
            raise ValidationError(
                "local KMS CreateGrant: constraints must be one of EncryptionContextSubset or "
                "EncryptionContextEquals"
            )
        [(kind, pairs)] = constraints.items()
        if kind not in _CONSTRAINTS:
            raise ValidationError(f"local KMS CreateGrant: unknown constraint {kind!r}")
        context_bytes(dict(pairs) if isinstance(pairs, Mapping) else pairs)  # str -> str
        if any(op in _NO_CONTEXT_OPERATIONS for op in operations):
            raise ValidationError(
                "local KMS CreateGrant: an encryption context constraint cannot apply to "
                f"{', '.join(_NO_CONTEXT_OPERATIONS)}"
            )
        return {kind: dict(pairs)}

    @staticmethod
    def _check_principal(value: str | None, what: str) -> None:
        if value is not None and (not isinstance(value, str) or not _ARN.match(value)):
            raise ValidationError(f"local KMS CreateGrant: {what} must be an IAM or STS ARN")

    def _may_create(self, record: dict[str, Any], child: GrantInfo) -> None:
        """CreateGrant needs kms:CreateGrant in the policy, or a grant of CreateGrant to the
        caller that covers everything the new grant gives; an explicit Deny beats both."""
        context = RequestContext(
            encryption_context=child.encryption_context_equals
            or child.encryption_context_subset
            or {}
        )
        decision = self._policy_decision(record, "kms:CreateGrant", context)
        if decision.allowed:
            return
        if not decision.explicit_deny:
            for parent in self.keys.grants(record):
                if (
                    "CreateGrant" in parent.operations
                    and principal_matches({"AWS": parent.grantee_principal}, self.principal)
                    and grant_narrows(parent, child)
                ):
                    return
        raise self._deny(record, "kms:CreateGrant", decision.reason)

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
        """Give ``grantee_principal`` ``operations`` on the key (KMS CreateGrant); return the
        grant id.

        :param operations: grant operation names (``Decrypt``, ``GenerateDataKey``...).
        :param constraints: ``{"EncryptionContextSubset": {...}}`` or
            ``{"EncryptionContextEquals": {...}}``.
        A grant with the same name and contents as an existing one returns that grant's id.
        """
        ops = self._grant_operations(operations)
        kept = self._grant_constraints(constraints, ops)
        self._check_principal(grantee_principal, "the grantee principal")
        self._check_principal(retiring_principal, "the retiring principal")
        if not isinstance(name, str) or not _GRANT_NAME.match(name):
            raise ValidationError("local KMS CreateGrant: the grant name is invalid")
        entry = {
            "grantee_principal": grantee_principal,
            "operations": list(ops),
            "retiring_principal": retiring_principal,
            "name": name,
            "constraints": kept,
        }
        with self.keys.locked():
            record = self.keys.load(key_id)
            child = GrantInfo(
                grant_id="",
                key_id=record["arn"],
                grantee_principal=grantee_principal,
                operations=ops,
                retiring_principal=retiring_principal,
                name=name,
                encryption_context_subset=kept.get("EncryptionContextSubset"),
                encryption_context_equals=kept.get("EncryptionContextEquals"),
            )
            self._may_create(record, child)
            if record["state"] not in ("Enabled", "Disabled", "PendingImport"):
                raise InvalidKeyState(f"local KMS: key {record['key_id']} is {record['state']}")
            grants: list[dict[str, Any]] = record.setdefault("grants", [])
            for existing in grants:
                if name and all(existing.get(k) == v for k, v in entry.items()):
                    return str(existing["grant_id"])
            grant_id = secrets.token_hex(32)
            grants.append({"grant_id": grant_id, **entry, "creation_date": now_iso()})
            self.keys.save(record)
        logger.bind(key_id=record["key_id"]).info(
            "local KMS grant created", grant_id=grant_id, operations=list(ops)
        )
        return grant_id

    def list_grants(self, key_id: str) -> list[GrantInfo]:
        """Every grant on the key (``kms:ListGrants``; grants cannot give this one)."""
        record = self.keys.load(key_id)
        decision = self._policy_decision(record, "kms:ListGrants")
        if not decision.allowed:
            raise self._deny(record, "kms:ListGrants", decision.reason)
        return self.keys.grants(record)

    @staticmethod
    def _grant_index(record: dict[str, Any], grant_id: str) -> int:
        for index, grant in enumerate(record.get("grants") or []):
            if grant["grant_id"] == grant_id:
                return index
        raise NotFound(f"local KMS: key {record['key_id']} has no grant {grant_id!r}")

    def retire_grant(self, key_id: str, grant_id: str) -> None:
        """Retire a grant (KMS RetireGrant): allowed for its retiring principal, for its
        grantee when it lists ``RetireGrant``, for the key's account root, and for a caller the
        policy gives ``kms:RetireGrant``; an explicit Deny of kms:RetireGrant beats them all."""
        with self.keys.locked():
            record = self.keys.load(key_id)
            index = self._grant_index(record, grant_id)
            grant = self.keys.grants(record)[index]
            decision = self._policy_decision(record, "kms:RetireGrant")
            if decision.explicit_deny or not (
                decision.allowed or self._may_retire(grant, record["arn"])
            ):
                raise self._deny(record, "kms:RetireGrant", decision.reason)
            del record["grants"][index]
            self.keys.save(record)
        logger.bind(key_id=record["key_id"]).info("local KMS grant retired", grant_id=grant_id)

    def _may_retire(self, grant: GrantInfo, arn: str) -> bool:
        """Whether the grant itself lets this caller retire it."""
        if grant.retiring_principal and principal_matches(
            {"AWS": grant.retiring_principal}, self.principal
        ):
            return True
        if "RetireGrant" in grant.operations and principal_matches(
            {"AWS": grant.grantee_principal}, self.principal
        ):
            return True
        parts = arn.split(":")
        return self.principal == f"arn:{parts[1]}:iam::{parts[4]}:root"  # the key's account

    def revoke_grant(self, key_id: str, grant_id: str) -> None:
        """Revoke a grant (``kms:RevokeGrant``, from the key policy only)."""
        with self.keys.locked():
            record = self.keys.load(key_id)
            decision = self._policy_decision(record, "kms:RevokeGrant")
            if not decision.allowed:
                raise self._deny(record, "kms:RevokeGrant", decision.reason)
            del record["grants"][self._grant_index(record, grant_id)]
            self.keys.save(record)
        logger.bind(key_id=record["key_id"]).info("local KMS grant revoked", grant_id=grant_id)

    # ------------------------------------------------------------------ Recipient

    def _recipient(self, recipient: Recipient, action: str, kid: str) -> VerifiedRecipient:
        """Check a Recipient as KMS does (against the configured root, at the present time)."""
        denied = f"local KMS: {action} on key {kid} denied for {self.principal}"
        if self.root_pem is None:
            raise AccessDenied(f"{denied}: no attestation root is configured")
        try:
            root = load_root_pem(self.root_pem)
        except AttestationError as exc:
            raise AccessDenied(f"{denied}: no usable attestation root: {exc}") from None
        try:
            return verify_recipient(recipient, root=root)
        except AttestationError as exc:
            raise AccessDenied(f"{denied}: attestation document does not verify: {exc}") from None
        except ValidationError as exc:
            raise ValidationError(f"local KMS {action} on key {kid}: {exc}") from None

    def _prepare(
        self,
        record: dict[str, Any],
        action: str,
        context: dict[str, str],
        recipient: Recipient | None,
    ) -> VerifiedRecipient | None:
        """Authorize ``action`` for this request, check the key state; return the Recipient."""
        verified = None
        if recipient is not None:
            verified = self._recipient(recipient, action, record["key_id"])
        pcrs = verified.pcrs if verified is not None else None
        self._authorize(record, action, RequestContext(encryption_context=context, pcrs=pcrs))
        self._require_enabled(record)
        return verified

    # ------------------------------------------------------------------ cryptography

    def encrypt(self, key_id: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        """Encrypt 1..4096 bytes under the key, binding ``context``; return the ciphertext blob."""
        if not 1 <= len(plaintext) <= MAX_PLAINTEXT:
            raise ValidationError(f"local KMS: plaintext must be 1..{MAX_PLAINTEXT} bytes")
        context_bytes(context)
        record = self.keys.load(key_id)
        self._prepare(record, "kms:Encrypt", context, None)
        return self.keys.seal(record, plaintext, context)

    def decrypt(
        self,
        key_id: str,
        ciphertext: bytes,
        context: dict[str, str],
        recipient: Recipient | None = None,
    ) -> KmsResult:
        """Decrypt a blob made by :meth:`encrypt`; ``context`` must equal the one used then.

        The key comes from the blob; a non-empty ``key_id`` must name that same key. With a
        ``recipient`` the plaintext only leaves as ``ciphertext_for_recipient``.
        """
        blob = bytes(ciphertext)
        kid = self.keys.blob_key(blob, key_id)
        context_bytes(context)
        record = self.keys.load(kid)
        recipient_key = self._prepare(record, "kms:Decrypt", context, recipient)
        plaintext = self.keys.unseal(record, blob, context)
        return self._answer(record, plaintext, recipient_key)

    def generate_data_key(
        self,
        key_id: str,
        context: dict[str, str],
        *,
        number_of_bytes: int = 32,
        recipient: Recipient | None = None,
    ) -> KmsResult:
        """Return 1..1024 random bytes and their ciphertext blob under the key."""
        if not 1 <= number_of_bytes <= 1024:
            raise ValidationError("local KMS: number_of_bytes must be 1..1024")
        context_bytes(context)
        record = self.keys.load(key_id)
        recipient_key = self._prepare(record, "kms:GenerateDataKey", context, recipient)
        plaintext = os.urandom(number_of_bytes)
        blob = self.keys.seal(record, plaintext, context)
        return self._answer(record, plaintext, recipient_key, blob)

    @staticmethod
    def _answer(
        record: dict[str, Any],
        plaintext: bytes,
        recipient: VerifiedRecipient | None,
        blob: bytes | None = None,
    ) -> KmsResult:
        if recipient is None:
            return KmsResult(key_id=record["arn"], plaintext=plaintext, ciphertext_blob=blob)
        envelope = recipient.envelope(plaintext)  # the plaintext never leaves unencrypted
        return KmsResult(
            key_id=record["arn"], ciphertext_for_recipient=envelope, ciphertext_blob=blob
        )


@hookimpl
def enclave_register_kms(registry: BackendRegistry[Any]) -> None:
    """Register the ``local`` KMS backend."""
    registry.add(LocalKms)
