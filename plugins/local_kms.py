"""``local`` KMS: symmetric keys in the state directory that behave like AWS KMS for enclaves.

Options (``kms.options``):

- ``path``: the key directory, relative to enclave.yaml's folder; default ``.enclave/kms``.
- ``principal``: the IAM role ARN this backend calls as (what :meth:`LocalKms.caller_arn`
  returns); default ``arn:aws:iam::000000000000:role/enclave``.
- ``root_pem``: the attestation root that Recipient documents must chain to; default
  ``<state dir>/dev-root.pem``, the simulated NSM's dev root. Like AWS KMS, which trusts only the
  AWS Nitro root, this backend trusts exactly one root, and never the AWS one unless configured.

Keys live in ``path`` as :mod:`enclave_core.crypto.keyfiles` describes: one JSON record per key
(id, ARN ``arn:aws:kms:{region}:000000000000:key/{id}``, state, policy, key material sealed under
``master.key``) and version-1 ciphertext blobs bound to their key and encryption context.

As in AWS: every operation on a key evaluates its key policy for the caller
(:func:`enclave_core.kms_policy.evaluate`; a denial is ``AccessDenied`` naming the key, the action
and the unmet condition); a new key gets the default policy (the account root may do everything);
``put_key_policy`` needs ``kms:PutKeyPolicy`` and, unless ``bypass_lockout_safety_check``, a new
policy that still lets the caller put a policy. A ``Recipient`` on Decrypt or GenerateDataKey must
carry ``RSAES_OAEP_SHA_256`` and an attestation document that verifies against the root now, whose
``public_key`` is an RSA SubjectPublicKeyInfo of at least 2048 bits; its PCRs feed the
``kms:RecipientAttestation:*`` conditions, and the answer is a ``CiphertextForRecipient`` (BER, as
KMS sends it) with no plaintext. ``create_key`` with a policy stores it from the first moment
and applies the same lockout safety check (and bypass) as ``put_key_policy``. Changes take an
exclusive ``flock`` on ``.lock`` and files are replaced atomically.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from loguru import logger
from marshmallow import Schema, fields, validate

from enclave_core import hookimpl
from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.crypto.keyfiles import MATERIAL_AAD, KeyDirectory, context_bytes
from enclave_core.crypto.kms_recipient import VerifiedRecipient, verify_recipient
from enclave_core.errors import AccessDenied, AttestationError, InvalidKeyState, ValidationError
from enclave_core.interfaces import BackendContext, KeyInfo, KmsResult, Recipient
from enclave_core.kms_policy import RequestContext, default_policy, evaluate, validate_policy
from enclave_core.registry import BackendRegistry

ACCOUNT = "000000000000"
DEFAULT_PRINCIPAL = f"arn:aws:iam::{ACCOUNT}:role/enclave"
MAX_PLAINTEXT = 4096  # the AWS KMS Encrypt limit
__all__ = ["ACCOUNT", "DEFAULT_PRINCIPAL", "MATERIAL_AAD", "LocalKms"]
_ARN = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:\S+$")


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

    def _authorize(
        self, record: dict[str, Any], action: str, context: RequestContext | None = None
    ) -> None:
        decision = evaluate(
            record["policy"],
            action=action,
            principal=self.principal,
            context=context or RequestContext(),
        )
        if not decision.allowed:
            raise AccessDenied(
                f"local KMS: {action} on key {record['key_id']} denied for {self.principal}: "
                f"{decision.reason}"
            )

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

    def create_key(
        self,
        *,
        description: str = "",
        policy: dict[str, Any] | None = None,
        bypass_lockout_safety_check: bool = False,
    ) -> KeyInfo:
        """Create an enabled key with fresh material and ``policy`` (default: account root).

        A given ``policy`` is checked as :meth:`put_key_policy` checks one (validity, and the
        lockout safety check unless ``bypass_lockout_safety_check``) and is in force from the
        key's first moment, as with AWS CreateKey's ``Policy``.
        """
        if policy is None:
            stored_policy = default_policy(ACCOUNT)
        else:
            stored_policy = validate_policy(policy)
            if not bypass_lockout_safety_check:
                self._refuse_lockout(stored_policy, "CreateKey")
        record = self.keys.new_record(description=description, policy=stored_policy)
        with self.keys.locked():
            self.keys.save(record)
        logger.bind(key_id=record["key_id"]).info("local KMS key created")
        return self.keys.info(record)

    def describe_key(self, key_id: str) -> KeyInfo:
        """Return the key's metadata (``kms:DescribeKey``); NotFound if it does not exist."""
        return self.keys.info(self._authorized(key_id, "kms:DescribeKey"))

    def get_key_policy(self, key_id: str) -> dict[str, Any]:
        """Return the key policy document (``kms:GetKeyPolicy``)."""
        policy: dict[str, Any] = self._authorized(key_id, "kms:GetKeyPolicy")["policy"]
        return policy

    def put_key_policy(
        self, key_id: str, policy: dict[str, Any], *, bypass_lockout_safety_check: bool = False
    ) -> None:
        """Replace the key policy (``kms:PutKeyPolicy``), with AWS's lockout safety check."""
        new_policy = validate_policy(policy)
        with self.keys.locked():
            record = self._authorized(key_id, "kms:PutKeyPolicy")
            if not bypass_lockout_safety_check:
                self._refuse_lockout(new_policy, f"key {record['key_id']}")
            record["policy"] = new_policy
            self.keys.save(record)
        logger.bind(key_id=record["key_id"]).info("local KMS key policy replaced")

    def _refuse_lockout(self, policy: dict[str, Any], what: str) -> None:
        """AWS's lockout safety check: the policy must still let the caller put a policy."""
        again = evaluate(
            policy, action="kms:PutKeyPolicy", principal=self.principal, context=RequestContext()
        )
        if not again.allowed:
            raise ValidationError(
                f"MalformedPolicyDocumentException: {what}: the new key policy will not allow "
                "you to update the key policy in the future"
            )

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
            ("Enabled", "Disabled"),
            state="PendingDeletion",
            deletion_date=when.isoformat(timespec="seconds"),
        )
        logger.bind(key_id=info.key_id).info(
            "local KMS key deletion scheduled", deletion_date=info.deletion_date
        )
        return info

    def cancel_key_deletion(self, key_id: str) -> KeyInfo:
        """Cancel a scheduled deletion (``kms:CancelKeyDeletion``); the key becomes Disabled."""
        return self._update(
            key_id,
            "kms:CancelKeyDeletion",
            ("PendingDeletion",),
            state="Disabled",
            deletion_date=None,
        )

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
