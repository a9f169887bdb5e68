"""TEST-ONLY: make moto's KMS behave like AWS KMS where the aws backend's tests need it to.

Why this exists: moto 5 (checked on 5.2.1 and 5.2.6) ignores four things real KMS enforces, so
without help the ``aws`` KMS backend's most important paths could not be exercised against it:

1. **Recipient.** moto drops the ``Recipient`` parameter and answers Decrypt and GenerateDataKey
   with a ``Plaintext``. Real KMS verifies the attestation document and answers with a
   ``CiphertextForRecipient`` (a CMS envelope for the document's RSA key) and no plaintext.
2. **Key policies.** moto stores them (as the text it was given, duplicate keys and all) but
   evaluates only explicit Deny statements of DescribeKey, and none of the
   ``kms:RecipientAttestation:*`` conditions or the lockout safety check.
3. **Grants.** moto stores grants (CreateGrant, ListGrants, RetireGrant, RevokeGrant) but never
   consults them: no operation is allowed by a grant, and anyone may retire any grant.
4. **Key state.** moto encrypts and decrypts with Disabled and PendingDeletion keys; real KMS
   answers ``DisabledException`` and ``KMSInvalidStateException``.
5. **Key metadata** (:meth:`KmsRecipientShim.correct_metadata`, on CreateKey and DescribeKey
   answers): moto leaves ``MultiRegion`` out for a key created without that parameter (KMS
   reports ``false``); it ignores CreateKey's ``CustomKeyStoreId`` (KMS makes the key in that
   store, origin ``AWS_CLOUDHSM``, and reports the store); and it makes an ``EXTERNAL`` key
   ``Enabled`` with material of its own (KMS: ``PendingImport`` until ImportKeyMaterial, which
   moto does not have).

:class:`KmsRecipientShim` installs botocore event handlers on the test's boto3 session (before its
KMS client is created) or on a client. Requests still go to the moto server over HTTP; the shim
only decides, as KMS would, whether they may, and rewrites the answer:

- ``before-parameter-build.kms.<op>``: pops the ``Recipient`` and checks it with
  :func:`enclave_core.crypto.recipient_checks.verify_recipient` against the given root (the
  simulated NSM's dev root) at the present time; reads the key's state and policy from moto (through
  a separate, hook-free client); evaluates the policy and the key's grants with
  :func:`enclave_core.kmspolicy.evaluation.authorize` for ``principal`` and the key's ARN, with the
  request's encryption context and the document's PCRs (CreateGrant through a grant only when
  the new grant is no wider; RetireGrant also for the grant's retiring principal or grantee);
  refuses policy text that is not strict JSON (a duplicate key) as MalformedPolicyDocument;
  applies the lockout safety check to CreateKey and PutKeyPolicy; refuses disabled or
  pending-deletion keys for Encrypt, Decrypt and GenerateDataKey. The same order and outcomes as
  the ``local`` KMS;
- a Decrypt whose ``KeyId`` is not the ciphertext's key is refused with ``IncorrectKeyException``,
  as KMS does (moto answers ``AccessDeniedException``);
- ``before-call.kms.<op>``: short-circuits a refused call with the error code KMS would send, so
  the client raises its own modelled exception (``DisabledException``...);
- ``after-call.kms.{Decrypt,GenerateDataKey}``: replaces ``Plaintext`` with a
  ``CiphertextForRecipient`` for the document's key, in KMS's BER layout.

The decision itself is :meth:`KmsRecipientShim.check`, which ``tests/services/kms_shim_server.py``
reuses for the same rules over HTTP (for a runtime in its own process). ``root`` may be a callable
that returns the certificate, so a root that does not exist yet is read when it is first needed.

Never import this outside ``tests/``: it trusts whatever root it is given, and it is the test
stand-in for AWS's side of the Recipient flow, nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from cryptography import x509

from enclave_core.crypto.recipient_checks import VerifiedRecipient, verify_recipient
from enclave_core.errors import AttestationError, ValidationError
from enclave_core.kmspolicy.conditions import principal_matches
from enclave_core.kmspolicy.evaluation import (
    Decision,
    RequestContext,
    authorize,
    evaluate,
    grant_narrows,
    parse_policy_text,
)
from enclave_core.plugin.interfaces import GrantInfo, Recipient

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
    "CreateGrant": "kms:CreateGrant",
    "ListGrants": "kms:ListGrants",
    "RetireGrant": "kms:RetireGrant",
    "RevokeGrant": "kms:RevokeGrant",
}
NEEDS_ENABLED = ("Encrypt", "Decrypt", "GenerateDataKey")
RECIPIENT_OPS = ("Decrypt", "GenerateDataKey")
LOCKOUT = "The new key policy will not allow you to update the key policy in the future."
_REFUSAL = "kms_recipient_shim.refusal"
_RECIPIENT = "kms_recipient_shim.recipient"
_KEY_STORE = "kms_recipient_shim.key_store"
METADATA_OPS = ("CreateKey", "DescribeKey")


@dataclass(frozen=True)
class _Key:
    arn: str
    state: str
    policy: dict[str, Any]
    grants: list[GrantInfo]


def _strict(text: str) -> dict[str, Any]:
    """A stored policy, strictly parsed; one that is not strict JSON allows nothing."""
    try:
        return parse_policy_text(text)
    except ValidationError:
        return {}


def _grant(entry: dict[str, Any]) -> GrantInfo:
    constraints = entry.get("Constraints") or {}
    return GrantInfo(
        grant_id=entry["GrantId"],
        key_id=entry["KeyId"],
        grantee_principal=entry.get("GranteePrincipal") or "",
        operations=tuple(entry.get("Operations") or ()),
        retiring_principal=entry.get("RetiringPrincipal"),
        name=entry.get("Name") or "",
        encryption_context_subset=constraints.get("EncryptionContextSubset"),
        encryption_context_equals=constraints.get("EncryptionContextEquals"),
    )


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
        self.key_stores: dict[str, str] = {}  # key id -> the CustomKeyStoreId it was made with
        self._admin: Any = None

    def install(self, target: Any) -> Any:
        """Register the hooks on a boto3 session (before it makes its KMS client) or a client."""
        events = target.meta.events if hasattr(target, "meta") else target.events
        for op in ACTIONS:
            events.register(f"before-parameter-build.kms.{op}", self._before_parameter_build)
            events.register(f"before-call.kms.{op}", self._before_call)
        for op in RECIPIENT_OPS:
            events.register(f"after-call.kms.{op}", self._after_call)
        for op in METADATA_OPS:
            events.register(f"after-call.kms.{op}", self._after_metadata)
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
            grants = admin.list_grants(KeyId=meta["KeyId"])["Grants"]
        except admin.exceptions.NotFoundException:
            return None  # moto answers NotFoundException itself
        meta = self.correct_metadata(meta)
        return _Key(meta["Arn"], meta["KeyState"], _strict(text), [_grant(g) for g in grants])

    def remember_key_store(self, key_id: str, store: str) -> None:
        """Note that CreateKey made ``key_id`` with ``CustomKeyStoreId`` ``store``."""
        self.key_stores[key_id] = store

    def correct_metadata(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Make moto's KeyMetadata say what KMS says (see point 5 of the module docstring)."""
        if meta.get("MultiRegion") is None:
            meta["MultiRegion"] = False
        store = self.key_stores.get(str(meta.get("KeyId")))
        if store is not None:
            meta["CustomKeyStoreId"] = store
            if meta.get("Origin") in (None, "AWS_KMS"):
                meta["Origin"] = "AWS_CLOUDHSM"
        if meta.get("Origin") == "EXTERNAL" and meta.get("KeyState") in ("Enabled", "Disabled"):
            meta["KeyState"], meta["Enabled"] = "PendingImport", False
        return meta

    def _denied(self, action: str, arn: str, reason: str) -> tuple[str, str]:
        return (
            "AccessDeniedException",
            f"User: {self.principal} is not authorized to perform: {action} on resource: "
            f"{arn} because {reason}",
        )

    def _lockout(self, params: dict[str, Any], arn: str | None) -> tuple[str, str] | None:
        """KMS's checks of a new policy: strict JSON, then the lockout safety check."""
        if "Policy" not in params:
            return None
        try:
            policy = parse_policy_text(params["Policy"])
        except ValidationError as exc:
            return "MalformedPolicyDocumentException", str(exc)
        if params.get("BypassPolicyLockoutSafetyCheck"):
            return None
        again = evaluate(
            policy,
            action="kms:PutKeyPolicy",
            principal=self.principal,
            context=RequestContext(),
            resource=arn,
        )
        return None if again.allowed else ("MalformedPolicyDocumentException", LOCKOUT)

    def _by_grant(self, operation: str, params: dict[str, Any], key: _Key, denied: bool) -> bool:
        """What grants allow beyond the policy for CreateGrant and RetireGrant."""
        if operation == "CreateGrant" and not denied:
            constraints = params.get("Constraints") or {}
            child = GrantInfo(
                grant_id="",
                key_id=key.arn,
                grantee_principal=str(params.get("GranteePrincipal", "")),
                operations=tuple(params.get("Operations") or ()),
                encryption_context_subset=constraints.get("EncryptionContextSubset"),
                encryption_context_equals=constraints.get("EncryptionContextEquals"),
            )
            return any(
                "CreateGrant" in parent.operations
                and principal_matches({"AWS": parent.grantee_principal}, self.principal)
                and grant_narrows(parent, child)
                for parent in key.grants
            )
        if operation == "RetireGrant" and not denied:
            for grant in key.grants:
                if grant.grant_id != params.get("GrantId"):
                    continue
                retiring = grant.retiring_principal or ""
                grantee = grant.grantee_principal if "RetireGrant" in grant.operations else ""
                return any(
                    who and principal_matches({"AWS": who}, self.principal)
                    for who in (retiring, grantee)
                )
        return False

    def _decide(
        self, operation: str, params: dict[str, Any], key: _Key, context: RequestContext
    ) -> Decision:
        """The policy and the grants, as KMS decides (grants cannot give policy-only actions)."""
        action = ACTIONS[operation]
        if operation in ("CreateGrant", "RetireGrant"):
            decision = evaluate(
                key.policy,
                action=action,
                principal=self.principal,
                context=context,
                resource=key.arn,
            )
            if not decision.allowed and self._by_grant(
                operation, params, key, decision.explicit_deny
            ):
                return Decision(True, f"{action} is allowed by a grant")
            return decision
        return authorize(
            key.policy,
            key.grants,
            action=action,
            principal=self.principal,
            context=context,
            resource=key.arn,
        )

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
            return self._lockout(params, None)
        if key is None:
            return verified
        context = RequestContext(
            encryption_context=params.get("EncryptionContext") or {},
            pcrs=verified.pcrs if verified is not None else None,
        )
        decision = self._decide(operation, params, key, context)
        if not decision.allowed:
            return self._denied(action, key.arn, decision.reason)
        if operation == "PutKeyPolicy" and (refusal := self._lockout(params, key.arn)):
            return refusal
        blob = params.get("CiphertextBlob")
        if operation == "Decrypt" and params.get("KeyId") and isinstance(blob, bytes | bytearray):
            # moto answers AccessDeniedException when KeyId is not the blob's key; KMS answers
            # IncorrectKeyException.
            blob_key = bytes(blob[:MOTO_KEY_ID_LEN]).decode("ascii", "replace")
            if key.arn.rpartition("/")[2] != blob_key:
                return "IncorrectKeyException", (
                    "The key ID in the request does not identify a KMS key that can perform "
                    "this operation."
                )
        if operation in NEEDS_ENABLED and key.state == "Disabled":
            return "DisabledException", f"{key.arn} is disabled."
        if operation in NEEDS_ENABLED and key.state != "Enabled":
            return "KMSInvalidStateException", f"{key.arn} is {key.state.lower()}."
        return verified

    # ------------------------------------------------------------------ hooks

    def _before_parameter_build(
        self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        if model.name == "CreateKey" and params.get("CustomKeyStoreId"):
            context[_KEY_STORE] = params["CustomKeyStoreId"]
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

    def _after_metadata(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        meta = parsed.get("KeyMetadata")
        if http_response.status_code >= 300 or not isinstance(meta, dict):
            return
        if context.get(_KEY_STORE):
            self.remember_key_store(str(meta.get("KeyId")), context[_KEY_STORE])
        self.correct_metadata(meta)
