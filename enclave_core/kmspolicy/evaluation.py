"""KMS key policies as AWS evaluates them: the IAM evaluation the local KMS runs on every call.

Pure functions. :func:`authorize` decides a call from the policy and the grants, failing closed
(an unknown operator, key or date is never met); :func:`parse_policy_text` parses policy text
strictly (duplicate keys refused). The enclave never trusts a key by evaluating its policy: it
requires an exact canonical document (:mod:`enclave_core.kmspolicy.canonical`). The rules in
full: docs/architecture.md, "IAM evaluation".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from enclave_core.errors import ValidationError
from enclave_core.kmspolicy.conditions import (
    MET,
    UNMET,
    RequestContext,
    action_matches,
    as_list,
    condition_results,
    principal_matches,
    resource_match,
)
from enclave_core.plugin.interfaces import GrantInfo

__all__ = [
    "GRANT_OPERATIONS",
    "Decision",
    "RequestContext",
    "authorize",
    "default_policy",
    "evaluate",
    "grant_allows",
    "grant_narrows",
    "parse_policy_text",
    "validate_policy",
]

_UNSUPPORTED_ELEMENTS = ("NotAction", "NotPrincipal", "NotResource")
#: The operations a grant on a symmetric encryption key may list (KMS CreateGrant).
GRANT_OPERATIONS = (
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
)


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`evaluate`: whether the call is allowed, and why (no request data).

    ``explicit_deny`` tells a Deny statement apart from the mere absence of an Allow: a grant
    can make up for the latter, never for the former.
    """

    allowed: bool
    reason: str
    explicit_deny: bool = False


def _label(statement: Mapping[str, Any], index: int) -> str:
    sid = statement.get("Sid")
    return (
        f"statement {sid!r} (#{index})" if isinstance(sid, str) and sid else f"statement #{index}"
    )


def _statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    statements = policy.get("Statement") if isinstance(policy, Mapping) else None
    statements = as_list(statements) if statements is not None else []
    return [s for s in statements if isinstance(s, Mapping)]


@dataclass(frozen=True)
class _Call:
    """The request one evaluation is about."""

    action: str
    principal: str
    context: RequestContext
    resource: str | None


def _deny_applies(statement: Mapping[str, Any], call: _Call) -> bool:
    """Whether a Deny statement covers this call (unknowns count against the caller)."""
    if "NotResource" not in statement:
        if "Resource" not in statement:
            return False  # no Resource: the statement has no effect
        if resource_match(statement["Resource"], call.resource) == UNMET:
            return False
    unsupported = any(k in statement for k in _UNSUPPORTED_ELEMENTS)
    if not unsupported and not (
        action_matches(statement.get("Action"), call.action)
        and principal_matches(statement.get("Principal"), call.principal)
    ):
        return False
    results = condition_results(statement.get("Condition"), call.context)
    return all(r != UNMET for r, _ in results)


def _allow_outcome(
    statement: Mapping[str, Any], label: str, call: _Call
) -> tuple[bool, str | None, str | None]:
    """(allows, unmet condition, resource miss) of an Allow statement for this call."""
    if any(k in statement for k in _UNSUPPORTED_ELEMENTS):
        return False, None, None
    if not action_matches(statement.get("Action"), call.action):
        return False, None, None
    if not principal_matches(statement.get("Principal"), call.principal):
        return False, None, None
    if "Resource" not in statement:
        return False, None, f"{label} has no Resource element, so it applies to nothing"
    if resource_match(statement["Resource"], call.resource) != MET:
        return False, None, f"{label} does not name this key in its Resource"
    results = condition_results(statement.get("Condition"), call.context)
    failed = [d for r, d in results if r != MET]
    if failed:
        return False, f"{label} allows {call.action} only when {failed[0]}", None
    return True, None, None


def evaluate(
    policy: Mapping[str, Any],
    *,
    action: str,
    principal: str,
    context: RequestContext,
    resource: str | None = None,
) -> Decision:
    """Decide whether ``principal`` may call ``action`` under ``policy`` for this request.

    :param policy: the key policy document.
    :param action: e.g. ``kms:Decrypt``.
    :param principal: the caller's ARN.
    :param context: the request's encryption context, attested PCRs and time.
    :param resource: the key's ARN, which ``Resource`` patterns are matched against; None:
        only ``"*"`` is known to match.
    :returns: the decision; its reason names the statement and the unmet condition.
    """
    call = _Call(action, principal, context, resource)
    allowed_by: str | None = None
    unmet: str | None = None
    missed: str | None = None
    for index, statement in enumerate(_statements(policy)):
        label = _label(statement, index)
        effect = statement.get("Effect")
        if effect == "Deny" and _deny_applies(statement, call):
            return Decision(False, f"{action} is explicitly denied by {label}", explicit_deny=True)
        if effect == "Allow" and allowed_by is None:
            allows, why, miss = _allow_outcome(statement, label, call)
            if allows:
                allowed_by = label
            unmet, missed = unmet or why, missed or miss
    if allowed_by is not None:
        return Decision(True, f"{action} is allowed by {allowed_by}")
    if unmet is not None:
        return Decision(False, f"condition not met: {unmet}")
    if missed is not None:
        return Decision(False, f"no statement allows {action} for {principal}: {missed}")
    return Decision(False, f"no statement allows {action} for {principal}")


def _operation(action: str) -> str:
    """``kms:Decrypt`` -> ``Decrypt`` (grants list operation names without the prefix)."""
    return action.split(":", 1)[1] if action.lower().startswith("kms:") else action


def _context_holds(grant: GrantInfo, context: Mapping[str, str]) -> bool:
    """Whether a grant's encryption-context constraint holds (exact, case-sensitive)."""
    if grant.encryption_context_equals is not None:
        if dict(context) != grant.encryption_context_equals:
            return False
    if grant.encryption_context_subset is not None:
        subset = grant.encryption_context_subset
        if any(context.get(k) != v for k, v in subset.items()):
            return False
    return True


def grant_allows(
    grant: GrantInfo, *, action: str, principal: str, encryption_context: Mapping[str, str]
) -> bool:
    """Whether ``grant`` lets ``principal`` call ``action`` (``kms:Decrypt`` or ``Decrypt``).

    The grantee matches as a policy principal does (a role ARN covers its STS sessions, an
    account root its whole account); the constraint must hold for ``encryption_context``.
    """
    operation = _operation(action)
    if operation not in GRANT_OPERATIONS or operation not in grant.operations:
        return False
    if not principal_matches({"AWS": grant.grantee_principal}, principal):
        return False
    return _context_holds(grant, encryption_context)


def grant_narrows(parent: GrantInfo, child: GrantInfo) -> bool:
    """Whether ``child`` gives no more than ``parent`` (what a grantee holding CreateGrant
    through ``parent`` may create): a subset of its operations, a constraint at least as
    strict."""
    if not set(child.operations) <= set(parent.operations):
        return False
    if parent.encryption_context_equals is not None:
        return child.encryption_context_equals == parent.encryption_context_equals
    if parent.encryption_context_subset is not None:
        required = parent.encryption_context_subset.items()
        narrower = child.encryption_context_equals or child.encryption_context_subset
        return narrower is not None and required <= narrower.items()
    return True


def authorize(
    policy: Mapping[str, Any],
    grants: Iterable[GrantInfo],
    *,
    action: str,
    principal: str,
    context: RequestContext,
    resource: str | None = None,
) -> Decision:
    """Decide a call as KMS does: the key policy, then the key's grants.

    An explicit Deny in the policy wins over every grant; otherwise a grant that
    :func:`grant_allows` the call allows it even when the policy does not.
    """
    decision = evaluate(
        policy, action=action, principal=principal, context=context, resource=resource
    )
    if decision.allowed or decision.explicit_deny:
        return decision
    for grant in grants:
        if grant_allows(
            grant,
            action=action,
            principal=principal,
            encryption_context=context.encryption_context,
        ):
            return Decision(True, f"{action} is allowed by grant {grant.grant_id}")
    return decision


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members, refusing a name that appears twice."""
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise ValidationError(f"key policy: duplicate key {name!r} in one object")
        members[name] = value
    return members


def _no_constant(name: str) -> Any:
    raise ValidationError(f"key policy: {name} is not a JSON value")


def parse_policy_text(text: str) -> dict[str, Any]:
    """Parse a key policy's JSON text strictly.

    :raises ValidationError: not a string, not JSON, ``NaN``/``Infinity``, a top level that is
        not an object, or a key appearing twice in one object (at any depth; named in the
        message, e.g. ``key policy: duplicate key 'Effect' in one object``).
    """
    if not isinstance(text, str):
        raise ValidationError("key policy: the policy text must be a string")
    try:
        document = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except ValidationError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ValidationError(f"key policy: not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ValidationError("key policy: the document must be a JSON object")
    return document


def validate_policy(policy: Any) -> dict[str, Any]:
    """Check a key policy's shape (a ``Version`` string, a ``Statement`` list of objects).

    :param policy: the document, or its JSON text (parsed by :func:`parse_policy_text`).
    :returns: a private, JSON-clean copy.
    :raises ValidationError: naming what is missing; nothing about its meaning is checked here.
    """
    if isinstance(policy, str):
        policy = parse_policy_text(policy)
    if not isinstance(policy, dict) or not isinstance(policy.get("Version"), str):
        raise ValidationError("key policy: a 'Version' string is required")
    statements = policy.get("Statement")
    if not isinstance(statements, list) or not all(isinstance(s, dict) for s in statements):
        raise ValidationError("key policy: a 'Statement' list of objects is required")
    try:
        text = json.dumps(policy, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"key policy: not JSON ({exc})") from None
    return parse_policy_text(text)  # keys that collide once made strings are duplicates


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
