"""IAM matching for KMS key policies: actions, principals, resources and condition tests.

The pure building blocks :mod:`enclave_core.kmspolicy.evaluation` evaluates statements with.
Each condition test yields ``met``, ``unmet`` (a key absent from the request included) or
``unknown`` (an operator or key not implemented here, a malformed block, a date that does not
parse), so callers can fail closed in both directions (docs/architecture.md, "IAM evaluation").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

RECIPIENT_PREFIX = "kms:recipientattestation:"
CONTEXT_PREFIX = "kms:encryptioncontext:"
CURRENT_TIME = "aws:currenttime"
STRING_OPERATORS = ("StringEquals", "StringEqualsIgnoreCase", "StringLike")
DATE_OPERATORS = ("DateLessThan", "DateLessThanEquals", "DateGreaterThan", "DateGreaterThanEquals")
OPERATORS = STRING_OPERATORS + DATE_OPERATORS
MET, UNMET, UNKNOWN = "met", "unmet", "unknown"
_PCR_NAME = re.compile(r"pcr([0-9]{1,2})")
_EPOCH = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class RequestContext:
    """The request values conditions are checked against.

    :param encryption_context: the call's encryption context.
    :param pcrs: the PCRs of the verified Recipient attestation document (index -> bytes); None
        when the request carries no Recipient.
    :param now: the request's time (UTC) for ``aws:CurrentTime``; None: the real current time
        when a condition looks it up.
    """

    encryption_context: Mapping[str, str] = field(default_factory=dict)
    pcrs: Mapping[int, bytes] | None = None
    now: datetime | None = None

    def current_time(self) -> datetime:
        """The request's time, timezone-aware (a naive ``now`` is taken as UTC)."""
        moment = self.now if self.now is not None else datetime.now(UTC)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

    def lookup(self, key: str) -> str | None:
        """The request's value of condition ``key`` (case-insensitive name), or None if absent."""
        name = key.lower()
        if name == CURRENT_TIME:
            return self.current_time().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if name.startswith(RECIPIENT_PREFIX):
            index = _pcr_index(name[len(RECIPIENT_PREFIX) :])
            if self.pcrs is None or index is None or index not in self.pcrs:
                return None
            return self.pcrs[index].hex()
        if name.startswith(CONTEXT_PREFIX):
            wanted = name[len(CONTEXT_PREFIX) :]
            found = [v for k, v in self.encryption_context.items() if k.lower() == wanted]
            return found[0] if len(found) == 1 else None  # two keys differing by case: not met
        return None


def _pcr_index(which: str) -> int | None:
    """``imagesha384`` -> 0, ``pcr<n>`` -> n (0..31), anything else -> None."""
    if which == "imagesha384":
        return 0
    match = _PCR_NAME.fullmatch(which)
    return int(match.group(1)) if match and int(match.group(1)) < 32 else None


def _known_key(key: str) -> bool:
    """Whether the string operators support condition ``key``."""
    name = key.lower()
    if name.startswith(CONTEXT_PREFIX):
        return len(name) > len(CONTEXT_PREFIX)
    return name.startswith(RECIPIENT_PREFIX) and (
        _pcr_index(name[len(RECIPIENT_PREFIX) :]) is not None
    )


def as_list(value: Any) -> list[Any]:
    """A policy element that may be one value or a list, as a list."""
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def resource_match(element: Any, resource: str | None) -> str:
    """Whether a statement's ``Resource`` covers the key: met, unmet or unknown.

    ``resource`` is the key's ARN; values match it with IAM wildcards, case-sensitively. With no
    ARN (None) only ``"*"`` is known to match; any other value is unknown. A malformed element
    (not a string or a non-empty list of strings) is unknown.
    """
    values = as_list(element)
    if not values or not all(isinstance(v, str) for v in values):
        return UNKNOWN
    if "*" in values:
        return MET
    if resource is None:
        return UNKNOWN
    hit = any(_wildcard(v, ignore_case=False).fullmatch(resource) for v in values)
    return MET if hit else UNMET


def action_matches(patterns: Any, action: str) -> bool:
    """Whether ``action`` is one of ``patterns`` (a string or list; IAM wildcards; any case)."""
    return any(
        isinstance(p, str) and _wildcard(p, ignore_case=True).fullmatch(action) is not None
        for p in as_list(patterns)
    )


def _account(arn: str) -> str | None:
    parts = arn.split(":", 5)
    return parts[4] if len(parts) == 6 and parts[0] == "arn" and parts[4] else None


def _normalise(principal: str) -> str:
    """An STS assumed-role session ARN stands for its IAM role, as in IAM policy matching."""
    parts = principal.split(":", 5)
    if len(parts) == 6 and parts[2] == "sts" and parts[5].startswith("assumed-role/"):
        role = parts[5].split("/")[1]
        return f"arn:{parts[1]}:iam::{parts[4]}:role/{role}"
    return principal


def principal_matches(principal_element: Any, principal: str) -> bool:
    """Whether a statement's ``Principal`` covers the caller ARN ``principal``."""
    if principal_element == "*":
        return True
    if not isinstance(principal_element, Mapping):
        return False
    caller = _normalise(principal)
    for entry in as_list(principal_element.get("AWS", [])):
        if not isinstance(entry, str):
            continue
        if entry == "*" or entry == caller:
            return True
        if entry.endswith(":root") and _account(entry) is not None:
            if _account(entry) == _account(caller) and entry.split(":")[1] == caller.split(":")[1]:
                return True
        if entry.isdigit() and len(entry) == 12 and entry == _account(caller):
            return True
    return False


def parse_date(value: str) -> datetime | None:
    """An IAM date condition value as an aware datetime, or None if it does not parse.

    ISO 8601 (``2026-12-06T17:40:00Z``, an offset, or a date alone; no zone means UTC) or
    epoch seconds as a string of digits.
    """
    try:
        if _EPOCH.fullmatch(value):
            return datetime.fromtimestamp(int(value), UTC)
        moment = datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError):  # out of datetime's range, or not a date
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


_DATE_TESTS = {
    "DateLessThan": lambda now, limit: now < limit,
    "DateLessThanEquals": lambda now, limit: now <= limit,
    "DateGreaterThan": lambda now, limit: now > limit,
    "DateGreaterThanEquals": lambda now, limit: now >= limit,
}


def _check_date(operator: str, key: str, values: Any, context: RequestContext) -> tuple[str, str]:
    """A Date operator over ``aws:CurrentTime``; a value that is not a date is unknown."""
    what = f"{operator} {key}"
    if key.lower() != CURRENT_TIME:
        return UNKNOWN, f"{what} (unsupported condition key)"
    expected = as_list(values)
    limits = [parse_date(v) if isinstance(v, str) else None for v in expected]
    if not limits or any(limit is None for limit in limits):
        return UNKNOWN, f"{what} (the policy's value is not a date)"
    now = context.current_time()
    met = any(_DATE_TESTS[operator](now, limit) for limit in limits)
    return (MET, what) if met else (UNMET, f"{what} (the request's time is outside it)")


def _check(operator: str, key: str, values: Any, context: RequestContext) -> tuple[str, str]:
    """One (operator, key) test: (met | unmet | unknown, a description without request data)."""
    what = f"{operator} {key}"
    expected = as_list(values)
    if operator in DATE_OPERATORS:
        return _check_date(operator, key, values, context)
    if operator not in STRING_OPERATORS:
        return UNKNOWN, f"{what} (unsupported operator)"
    if not _known_key(key):
        return UNKNOWN, f"{what} (unsupported condition key)"
    if not expected or not all(isinstance(v, str) for v in expected):
        return UNMET, f"{what} (the policy's values are not strings)"
    actual = context.lookup(key)
    if actual is None:
        recipient = key.lower().startswith(RECIPIENT_PREFIX)
        absent = "no attestation document" if recipient else "no such value"
        return UNMET, f"{what} (the request has {absent})"
    if operator == "StringEquals":
        met = actual in expected
    elif operator == "StringEqualsIgnoreCase":
        met = actual.casefold() in {v.casefold() for v in expected}
    else:
        met = any(_wildcard(v, ignore_case=False).fullmatch(actual) for v in expected)
    return (MET, what) if met else (UNMET, f"{what} (the request's value differs)")


def condition_results(condition: Any, context: RequestContext) -> list[tuple[str, str]]:
    """Test every (operator, key) of a ``Condition`` block: ``[(met|unmet|unknown, description)]``.

    Descriptions name the operator and key, never a request value.
    """
    if condition is None:
        return []
    if not isinstance(condition, Mapping):
        return [(UNKNOWN, "a malformed Condition block")]
    results = []
    for operator, tests in condition.items():
        if not isinstance(tests, Mapping) or not tests:
            results.append((UNKNOWN, f"{operator} (malformed)"))
            continue
        results.extend(_check(str(operator), str(k), v, context) for k, v in tests.items())
    return results
