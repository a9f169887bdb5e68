"""KMS key policies: IAM-style evaluation, the enclave's locked policy, and a lock analysis.

Pure functions, no I/O. The local KMS evaluates every call with :func:`evaluate`; the runtime
applies :func:`locked_policy` on first boot and checks its key with :func:`analyse`, which
export-key (issue 5) also uses on a migration target.

Evaluation follows IAM for the subset key policies use:

- an explicit ``Deny`` that applies wins; otherwise the call is allowed iff some ``Allow``
  statement matches the action (``kms:Decrypt``, wildcards such as ``kms:*``, ``kms:Generate*``,
  ``*``, a string or a list; case-insensitive), the principal (``"*"``, ``{"AWS": "*"}``,
  ``{"AWS": arn | [arns]}``; the account root ``arn:aws:iam::ACCOUNT:root`` or the bare account id
  matches every principal of that account) and **all** of its conditions;
- conditions (:mod:`enclave_core.kms_conditions`): ``StringEquals``, ``StringEqualsIgnoreCase``
  and ``StringLike`` over ``kms:RecipientAttestation:ImageSha384`` (PCR0),
  ``kms:RecipientAttestation:PCR<n>`` and ``kms:EncryptionContext:<key>``;
- **fail closed**: a condition key absent from the request (no Recipient document, no such
  context key) is not met; an unknown operator (``...IfExists``, ``ForAnyValue:``...) or an unknown
  key is not met either. Statements using ``NotAction``, ``NotPrincipal`` or ``NotResource`` never
  allow anything. For ``Deny`` the same unknowns work the other way: such a Deny applies, unless
  one of its supported conditions is definitely not met. ``Resource`` is not checked (in a key
  policy it names the key itself).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from enclave_core.errors import ValidationError
from enclave_core.kms_conditions import (
    MET,
    RECIPIENT_PREFIX,
    UNMET,
    RequestContext,
    action_matches,
    as_list,
    condition_results,
    principal_matches,
)

__all__ = [
    "Decision",
    "PolicyAnalysis",
    "RequestContext",
    "analyse",
    "default_policy",
    "evaluate",
    "locked_policy",
    "migration_target_policy",
    "validate_policy",
]

ATTESTATION_OPERATORS = ("StringEquals", "StringEqualsIgnoreCase")
#: What "decrypting" means when a policy is analysed: every way to obtain a key's plaintext.
DECRYPT_ACTIONS = (
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
)
#: Actions that change who may use the key: a new policy, a grant, or (multi-Region keys) a
#: replica with the same key material under a policy of the caller's choosing.
ADMIN_ACTIONS = ("kms:PutKeyPolicy", "kms:CreateGrant", "kms:ReplicateKey")
LOCKED_ACTIONS = ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom"]
_UNSUPPORTED_ELEMENTS = ("NotAction", "NotPrincipal", "NotResource")


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`evaluate`: whether the call is allowed, and why (no request data)."""

    allowed: bool
    reason: str


@dataclass(frozen=True)
class PolicyAnalysis:
    """What a key policy lets principals do, as :func:`analyse` found it."""

    #: Nobody can change the policy or delegate (PutKeyPolicy, CreateGrant, ReplicateKey, or a
    #: wildcard such as ``kms:*`` covering them).
    locked: bool
    #: The PCR0 (ImageSha384) values under which Decrypt/GenerateDataKey are allowed.
    attested_pcr0: frozenset[str]
    #: Some principal can get plaintext (Decrypt, GenerateDataKey...) without attestation.
    unconditioned_decrypt: bool
    #: Human-readable findings, each naming the statement (Sid or index).
    reasons: list[str]


def _label(statement: Mapping[str, Any], index: int) -> str:
    sid = statement.get("Sid")
    return (
        f"statement {sid!r} (#{index})" if isinstance(sid, str) and sid else f"statement #{index}"
    )


def _statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    statements = policy.get("Statement") if isinstance(policy, Mapping) else None
    statements = as_list(statements) if statements is not None else []
    return [s for s in statements if isinstance(s, Mapping)]


def evaluate(
    policy: Mapping[str, Any], *, action: str, principal: str, context: RequestContext
) -> Decision:
    """Decide whether ``principal`` may call ``action`` under ``policy`` for this request.

    :param policy: the key policy document.
    :param action: e.g. ``kms:Decrypt``.
    :param principal: the caller's ARN.
    :param context: the request's encryption context and attested PCRs.
    :returns: the decision; its reason names the statement and the unmet condition.
    """
    allowed_by: str | None = None
    unmet: str | None = None
    for index, statement in enumerate(_statements(policy)):
        label = _label(statement, index)
        unsupported = any(k in statement for k in _UNSUPPORTED_ELEMENTS)
        effect = statement.get("Effect")
        if effect == "Deny":
            if not unsupported and not (
                action_matches(statement.get("Action"), action)
                and principal_matches(statement.get("Principal"), principal)
            ):
                continue
            if all(r != UNMET for r, _ in condition_results(statement.get("Condition"), context)):
                return Decision(False, f"{action} is explicitly denied by {label}")
        elif effect == "Allow" and not unsupported and allowed_by is None:
            if not action_matches(statement.get("Action"), action):
                continue
            if not principal_matches(statement.get("Principal"), principal):
                continue
            failed = [
                d for r, d in condition_results(statement.get("Condition"), context) if r != MET
            ]
            if not failed:
                allowed_by = label
            elif unmet is None:
                unmet = f"{label} allows {action} only when {failed[0]}"
    if allowed_by is not None:
        return Decision(True, f"{action} is allowed by {allowed_by}")
    if unmet is not None:
        return Decision(False, f"condition not met: {unmet}")
    return Decision(False, f"no statement allows {action} for {principal}")


def validate_policy(policy: Any) -> dict[str, Any]:
    """Check a key policy's shape (a ``Version`` string, a ``Statement`` list of objects).

    :returns: a private, JSON-clean copy.
    :raises ValidationError: naming what is missing; nothing about its meaning is checked here.
    """
    if not isinstance(policy, dict) or not isinstance(policy.get("Version"), str):
        raise ValidationError("key policy: a 'Version' string is required")
    statements = policy.get("Statement")
    if not isinstance(statements, list) or not all(isinstance(s, dict) for s in statements):
        raise ValidationError("key policy: a 'Statement' list of objects is required")
    try:
        copy: dict[str, Any] = json.loads(json.dumps(policy))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"key policy: not JSON ({exc})") from None
    return copy


def default_policy(account: str) -> dict[str, Any]:
    """The policy AWS gives a key created without one: the account root may do everything."""
    return {
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [
            {
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }


def locked_policy(*, pcr0_hex: str, principal_arn: str) -> dict[str, Any]:
    """The policy the runtime applies on first boot: only its own image can get plaintext.

    Decrypt, GenerateDataKey and GenerateRandom need a Recipient document with PCR0 = ``pcr0_hex``;
    DescribeKey and GetKeyPolicy let the runtime check the lock; ScheduleKeyDeletion lets a
    successor retire the key after a migration. Nothing else: no Encrypt (an unconditioned Encrypt
    would let the host forge ciphertexts of chosen plaintext), no PutKeyPolicy, no CreateGrant, no
    ``kms:*`` and no account-root statement, so the policy can never change again.
    """
    who = {"AWS": principal_arn}
    condition = {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": pcr0_hex.lower()}}
    return {
        "Version": "2012-10-17",
        "Id": "simple-enclave-locked",
        "Statement": [
            {
                "Sid": "EnclaveDecryptWithAttestation",
                "Effect": "Allow",
                "Principal": who,
                "Action": list(LOCKED_ACTIONS),
                "Resource": "*",
                "Condition": condition,
            },
            {
                "Sid": "EnclaveReadKey",
                "Effect": "Allow",
                "Principal": who,
                "Action": ["kms:DescribeKey", "kms:GetKeyPolicy"],
                "Resource": "*",
            },
            {
                "Sid": "AllowKeyDeletion",
                "Effect": "Allow",
                "Principal": who,
                "Action": "kms:ScheduleKeyDeletion",
                "Resource": "*",
            },
        ],
    }


def migration_target_policy(
    *, pcr0_hex: str, principal_arn: str, app: str, host_arn: str | None = None
) -> dict[str, Any]:
    """The final policy of a migration's new key (DESIGN section 7, step 3).

    It is :func:`locked_policy` for the new image's PCR0 plus ``kms:Encrypt`` for the enclave
    principal, limited to encryption contexts naming ``app``: the old enclave needs Encrypt to
    re-encrypt its secrets under the new key. Encrypt gives no plaintext, so the policy stays
    locked. ``host_arn`` (the supervisor's principal, when it differs) may read the key and
    schedule its deletion, nothing more. Known limit: whoever holds Encrypt can make ciphertexts
    of chosen plaintexts under the key; the app name condition narrows, not removes, that.
    """
    policy = locked_policy(pcr0_hex=pcr0_hex, principal_arn=principal_arn)
    policy["Id"] = "simple-enclave-migration-target"
    if host_arn and host_arn != principal_arn:
        both = {"AWS": [principal_arn, host_arn]}
        for statement in policy["Statement"]:
            if statement["Sid"] in ("EnclaveReadKey", "AllowKeyDeletion"):
                statement["Principal"] = both
    policy["Statement"].append(
        {
            "Sid": "EnclaveReEncryptForMigration",
            "Effect": "Allow",
            "Principal": {"AWS": principal_arn},
            "Action": "kms:Encrypt",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:EncryptionContext:app": app}},
        }
    )
    return policy


def _grants(statement: Mapping[str, Any], action: str) -> bool:
    if "NotAction" in statement:  # everything except the listed actions
        return not action_matches(statement.get("NotAction"), action)
    return action_matches(statement.get("Action"), action)


def _blanket_denied(statements: Iterable[Mapping[str, Any]], action: str) -> bool:
    """Whether an unconditional Deny for every principal covers ``action``."""
    return any(
        s.get("Effect") == "Deny"
        and s.get("Principal") in ("*", {"AWS": "*"})
        and "Condition" not in s
        and not any(k in s for k in _UNSUPPORTED_ELEMENTS)
        and action_matches(s.get("Action"), action)
        for s in statements
    )


def _attested_values(condition: Any) -> frozenset[str] | None:
    """The PCR0 values a statement's condition admits, or None if it does not pin PCR0."""
    if not isinstance(condition, Mapping):
        return None
    admitted: frozenset[str] | None = None
    for operator in ATTESTATION_OPERATORS:
        tests = condition.get(operator)
        if not isinstance(tests, Mapping):
            continue
        for key, values in tests.items():
            if str(key).lower() not in (
                RECIPIENT_PREFIX + "pcr0",
                RECIPIENT_PREFIX + "imagesha384",
            ):
                continue
            listed = as_list(values)
            if not listed or not all(isinstance(v, str) for v in listed):
                continue
            found = frozenset(v.lower() if operator.endswith("IgnoreCase") else v for v in listed)
            admitted = found if admitted is None else admitted & found  # conditions are ANDed
    return admitted


def _who(statement: Mapping[str, Any]) -> str:
    if "NotPrincipal" in statement:
        return "every principal but those in NotPrincipal"
    element = statement.get("Principal")
    if element == "*":
        return "any principal"
    if isinstance(element, Mapping):
        names = [str(v) for values in element.values() for v in as_list(values)]
        return ", ".join(names) or "no principal"
    return "an unreadable principal"


def analyse(policy: Mapping[str, Any], *, pcr0_hex: str | None = None) -> PolicyAnalysis:
    """Find out whether a key policy is locked and to which images it lets Decrypt happen.

    A statement counts as attestation-conditioned only if it has ``StringEquals`` or
    ``StringEqualsIgnoreCase`` on ``kms:RecipientAttestation:PCR0`` or ``ImageSha384``; every
    value listed there is reported in ``attested_pcr0`` (several values: several images can
    decrypt). Other conditions (encryption context, unknown operators) do not pin an image, so a
    statement with only those is unconditioned. Principals and conditions on PutKeyPolicy and
    CreateGrant are ignored: whoever holds them can change the policy. Only an unconditional Deny
    for every principal takes an action away.

    :param policy: the key policy document.
    :param pcr0_hex: this enclave's PCR0; named in ``reasons`` when the policy does not admit it.
    """
    statements = _statements(policy)
    locked, unconditioned = True, False
    attested: set[str] = set()
    reasons: list[str] = []
    for index, statement in enumerate(statements):
        if statement.get("Effect") != "Allow":
            continue
        label, who = _label(statement, index), _who(statement)
        for action in ADMIN_ACTIONS:
            if _grants(statement, action) and not _blanket_denied(statements, action):
                locked = False
                reasons.append(f"{label} lets {who} call {action}: the policy can change")
        granted = [
            a
            for a in DECRYPT_ACTIONS
            if _grants(statement, a) and not _blanket_denied(statements, a)
        ]
        if not granted:
            continue
        values = _attested_values(statement.get("Condition"))
        if values is None:
            unconditioned = True
            reasons.append(
                f"{label} lets {who} call {', '.join(granted)} without an attestation condition"
            )
            continue
        attested |= values
        if len(values) > 1:
            reasons.append(f"{label} lets {len(values)} images (PCR0 values) decrypt")
    if pcr0_hex is not None and pcr0_hex.lower() not in attested:
        reasons.append(f"no statement lets PCR0 {pcr0_hex.lower()[:16]}… decrypt")
    return PolicyAnalysis(
        locked=locked,
        attested_pcr0=frozenset(attested),
        unconditioned_decrypt=unconditioned,
        reasons=reasons,
    )
