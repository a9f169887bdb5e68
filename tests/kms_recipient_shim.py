"""TEST-ONLY: make moto's KMS behave like AWS KMS where the aws backend's tests need it to.

Why this exists: moto 5 (checked on 5.2.1) ignores three things real KMS enforces, so without
help the ``aws`` KMS backend's most important paths could not be exercised against it:

1. **Recipient.** moto drops the ``Recipient`` parameter and answers Decrypt and GenerateDataKey
   with a ``Plaintext``. Real KMS verifies the attestation document and answers with a
   ``CiphertextForRecipient`` (a CMS envelope for the document's RSA key) and no plaintext.
2. **Key policies.** moto stores them but evaluates only explicit Deny statements of DescribeKey,
   and none of the ``kms:RecipientAttestation:*`` conditions or the lockout safety check.
3. **Key state.** moto encrypts and decrypts with Disabled and PendingDeletion keys; real KMS
   answers ``DisabledException`` and ``KMSInvalidStateException``.

:class:`KmsRecipientShim` installs botocore event handlers on the test's boto3 session (before its
KMS client is created) or on a client. Requests still go to the moto server over HTTP; the shim
only decides, as KMS would, whether they may, and rewrites the answer:

- ``before-parameter-build.kms.<op>``: pops the ``Recipient`` and checks it with
  :func:`enclave_core.crypto.kms_recipient.verify_recipient` against the given root (the simulated
  NSM's dev root) at the present time; reads the key's state and policy from moto (through a
  separate, hook-free client); evaluates the policy with :func:`enclave_core.kms_policy.evaluate`
  for ``principal`` with the request's encryption context and the document's PCRs; applies the
  lockout safety check to CreateKey and PutKeyPolicy; refuses disabled or pending-deletion keys
  for Encrypt, Decrypt and GenerateDataKey. The same order and outcomes as the ``local`` KMS;
- ``before-call.kms.<op>``: short-circuits a refused call with the error code KMS would send, so
  the client raises its own modelled exception (``DisabledException``...);
- ``after-call.kms.{Decrypt,GenerateDataKey}``: replaces ``Plaintext`` with a
  ``CiphertextForRecipient`` for the document's key, in KMS's BER layout.

The decision itself is :meth:`KmsRecipientShim.check`, which ``tests/kms_shim_server.py`` reuses
for the same rules over HTTP (for a runtime in its own process). ``root`` may be a callable that
returns the certificate, so a root that does not exist yet is read when it is first needed.

Never import this outside ``tests/``: it trusts whatever root it is given, and it is the test
stand-in for AWS's side of the Recipient flow, nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from cryptography import x509

from enclave_core.crypto.kms_recipient import VerifiedRecipient, verify_recipient
from enclave_core.errors import AttestationError, ValidationError
from enclave_core.interfaces import Recipient
from enclave_core.kms_policy import RequestContext, evaluate

#: What the aws backend's ``caller_arn()`` reports against moto for credentials moto did not issue
#: (moto answers ``arn:aws:sts::123456789012:user/moto``).
MOTO_PRINCIPAL = "arn:aws:iam::123456789012:user/moto"
MOTO_KEY_ID_LEN = 36  # moto's ciphertext blob starts with the key id (moto/kms/utils.py)
#: Operations checked, and the policy action each needs.
ACTIONS = {
    "CreateKey": "kms:CreateKey",
    "DescribeKey": "kms:DescribeKey",
    "GetKeyPolicy": "kms:GetKeyPolicy",
    "PutKeyPolicy": "kms:PutKeyPolicy",
    "ScheduleKeyDeletion": "kms:ScheduleKeyDeletion",
    "Encrypt": "kms:Encrypt",
    "Decrypt": "kms:Decrypt",
    "GenerateDataKey": "kms:GenerateDataKey",
}
NEEDS_ENABLED = ("Encrypt", "Decrypt", "GenerateDataKey")
RECIPIENT_OPS = ("Decrypt", "GenerateDataKey")
LOCKOUT = "The new key policy will not allow you to update the key policy in the future."
_REFUSAL = "kms_recipient_shim.refusal"
_RECIPIENT = "kms_recipient_shim.recipient"


@dataclass(frozen=True)
class _Key:
    arn: str
    state: str
    policy: dict[str, Any]


class KmsRecipientShim:
    """Botocore hooks giving moto's KMS the Recipient flow, policies and key states of AWS KMS.

    :param root: the trust anchor for attestation documents (the dev root of a SimulatedNsm), or
        a callable returning it, called for every Recipient (it may raise AttestationError).
    :param endpoint_url: the moto server, for the shim's own key lookups.
    :param principal: the caller's IAM ARN that key policies are evaluated for.
    """

    def __init__(
        self,
        *,
        root: x509.Certificate | Callable[[], x509.Certificate],
        endpoint_url: str,
        region: str = "us-east-1",
        principal: str = MOTO_PRINCIPAL,
    ) -> None:
        self._root = root
        self.endpoint_url = endpoint_url
        self.region = region
        self.principal = principal
        self.verified: list[VerifiedRecipient] = []  # every Recipient accepted, for assertions
        self._admin: Any = None

    def install(self, target: Any) -> Any:
        """Register the hooks on a boto3 session (before it makes its KMS client) or a client."""
        events = target.meta.events if hasattr(target, "meta") else target.events
        for op in ACTIONS:
            events.register(f"before-parameter-build.kms.{op}", self._before_parameter_build)
            events.register(f"before-call.kms.{op}", self._before_call)
        for op in RECIPIENT_OPS:
            events.register(f"after-call.kms.{op}", self._after_call)
        return target

    @property
    def root(self) -> x509.Certificate:
        """The trusted root now (read through the callable when one was given)."""
        return self._root if isinstance(self._root, x509.Certificate) else self._root()

    @root.setter
    def root(self, root: x509.Certificate | Callable[[], x509.Certificate]) -> None:
        self._root = root

    # ------------------------------------------------------------------ what KMS would decide

    def _admin_client(self) -> Any:
        if self._admin is None:
            session = boto3.session.Session(
                aws_access_key_id="testing", aws_secret_access_key="testing"
            )
            self._admin = session.client(
                "kms", region_name=self.region, endpoint_url=self.endpoint_url
            )
        return self._admin

    def _key(self, params: dict[str, Any]) -> _Key | None:
        """The key the call uses, or None to let moto answer (no such key, CreateKey)."""
        key_id = params.get("KeyId")
        blob = params.get("CiphertextBlob")
        if not key_id and isinstance(blob, bytes | bytearray):
            key_id = bytes(blob[:MOTO_KEY_ID_LEN]).decode("ascii", "replace")
        if not key_id:
            return None
        admin = self._admin_client()
        try:
            meta = admin.describe_key(KeyId=key_id)["KeyMetadata"]
            text = admin.get_key_policy(KeyId=meta["KeyId"], PolicyName="default")["Policy"]
        except admin.exceptions.NotFoundException:
            return None  # moto answers NotFoundException itself
        return _Key(meta["Arn"], meta["KeyState"], json.loads(text))

    def _denied(self, action: str, arn: str, reason: str) -> tuple[str, str]:
        return (
            "AccessDeniedException",
            f"User: {self.principal} is not authorized to perform: {action} on resource: "
            f"{arn} because {reason}",
        )

    def _lockout(self, params: dict[str, Any]) -> tuple[str, str] | None:
        if "Policy" not in params or params.get("BypassPolicyLockoutSafetyCheck"):
            return None
        again = evaluate(
            json.loads(params["Policy"]),
            action="kms:PutKeyPolicy",
            principal=self.principal,
            context=RequestContext(),
        )
        return None if again.allowed else ("MalformedPolicyDocumentException", LOCKOUT)

    def check(
        self, operation: str, params: dict[str, Any]
    ) -> tuple[str, str] | VerifiedRecipient | None:
        """Return the (error code, message) KMS would answer with, else the verified Recipient
        (None without one).

        ``operation`` is a key of :data:`ACTIONS`; ``params`` the request's parameters, with
        ``CiphertextBlob`` and ``Recipient.AttestationDocument`` as bytes. The Recipient is
        popped from ``params`` either way: moto must not see it.
        """
        action = ACTIONS[operation]
        sent = params.pop("Recipient", None) if operation in RECIPIENT_OPS else None
        key = self._key(params)
        where = key.arn if key is not None else str(params.get("KeyId", ""))
        verified = None
        if sent is not None:
            recipient = Recipient(
                attestation_document=bytes(sent.get("AttestationDocument") or b""),
                key_encryption_algorithm=str(sent.get("KeyEncryptionAlgorithm", "")),
            )
            try:
                verified = verify_recipient(recipient, root=self.root)
            except AttestationError as exc:
                return self._denied(action, where, f"the attestation document is invalid: {exc}")
            except ValidationError as exc:
                return "ValidationException", str(exc)
        if operation == "CreateKey":
            return self._lockout(params)
        if key is None:
            return verified
        context = RequestContext(
            encryption_context=params.get("EncryptionContext") or {},
            pcrs=verified.pcrs if verified is not None else None,
        )
        decision = evaluate(key.policy, action=action, principal=self.principal, context=context)
        if not decision.allowed:
            return self._denied(action, key.arn, decision.reason)
        if operation == "PutKeyPolicy" and (refusal := self._lockout(params)):
            return refusal
        if operation in NEEDS_ENABLED and key.state == "Disabled":
            return "DisabledException", f"{key.arn} is disabled."
        if operation in NEEDS_ENABLED and key.state != "Enabled":
            return "KMSInvalidStateException", f"{key.arn} is {key.state.lower()}."
        return verified

    # ------------------------------------------------------------------ hooks

    def _before_parameter_build(
        self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        outcome = self.check(model.name, params)
        if isinstance(outcome, tuple):
            context[_REFUSAL] = outcome
        elif outcome is not None:
            self.verified.append(outcome)
            context[_RECIPIENT] = outcome

    def _before_call(self, context: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]] | None:
        if _REFUSAL not in context:
            return None
        code, message = context[_REFUSAL]
        parsed = {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        return AWSResponse(self.endpoint_url, 400, {}, None), parsed

    def _after_call(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        recipient: VerifiedRecipient | None = context.get(_RECIPIENT)
        if recipient is None or http_response.status_code >= 300 or "Plaintext" not in parsed:
            return
        parsed["CiphertextForRecipient"] = recipient.envelope(parsed.pop("Plaintext"))
