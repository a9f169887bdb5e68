"""The canonical key policies of an enclave's KMS keys: render one, recognise one exactly.

An enclave trusts a key only when its policy is one of the documents :func:`render_policy` makes
(docs/threat-model.md): :func:`match_policy` parses a policy into the :class:`EnclaveKeyPolicy`
that renders it, or raises :class:`PolicyMismatch` naming the first difference, after normalising
only what IAM treats as equal. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from enclave_core.errors import EnclaveError

__all__ = [
    "ACCOUNT_ADMIN_ACTIONS",
    "ACCOUNT_ADMIN_SID",
    "EnclaveKeyPolicy",
    "PolicyMismatch",
    "account_of",
    "account_root_arn",
    "format_deadline",
    "locked_policy",
    "match_policy",
    "parse_deadline",
    "policy_sha256",
    "render_policy",
]

VERSION = "2012-10-17"
GENESIS_ID = "simple-enclave-key"
MIGRATION_ID = "simple-enclave-migration-key"
DECRYPT_SID = "EnclaveDecryptWithAttestation"
READ_SID = "EnclaveReadKey"
DELETE_SID = "AllowKeyDeletion"
EXPORT_SID = "EnclaveExportWindow"
ACCOUNT_ADMIN_SID = "AccountAdministrationWithoutKeyUse"
DECRYPT_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom")
READ_ACTIONS = ("kms:DescribeKey", "kms:GetKeyPolicy", "kms:ListGrants")
#: What a deployment's account may do with the key it created: read it, manage its rotation,
#: tags and description, and schedule or cancel its deletion. Nothing that yields plaintext,
#: makes a ciphertext, or changes who may use the key.
ACCOUNT_ADMIN_ACTIONS = (
    "kms:CancelKeyDeletion",
    "kms:DescribeKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateKeyDescription",
)
PCR0_KEY = "kms:RecipientAttestation:PCR0"
PCR8_KEY = "kms:RecipientAttestation:PCR8"
APP_KEY = "kms:EncryptionContext:app"
TIME_KEY = "aws:CurrentTime"
_HEX96 = re.compile(r"^[0-9a-f]{96}$")
_DEADLINE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_ARN = re.compile(r"^arn:(aws[a-z-]*):(iam|sts)::(\d{12}):\S+$")


class PolicyMismatch(EnclaveError):
    """A key policy is not the canonical document this enclave expects (the reason says where)."""


@dataclass(frozen=True)
class EnclaveKeyPolicy:
    """The parameters of one canonical enclave key policy.

    :ivar principal: the enclave's IAM role ARN, the only principal that may use the key.
    :ivar pcr0: the image allowed to decrypt (96 lower-case hex characters, never all zero).
    :ivar pcr8: the signing certificate's PCR8 the image must also carry, or None (unsigned).
    :ivar app: the app name; set on migration keys (their export window is limited to it).
    :ivar export_until: the end of a migration key's export window (UTC, whole seconds), or None
        for a key made for a first boot.
    :ivar account_root: the account root ARN of a key made by ``enclave deploy``, whose account
        may administer (never use) it; None otherwise.
    """

    principal: str
    pcr0: str
    pcr8: str | None = None
    app: str | None = None
    export_until: datetime | None = None
    account_root: str | None = None

    @property
    def migration(self) -> bool:
        """Whether this is a migration key (made by an old enclave for its successor)."""
        return self.export_until is not None


def account_of(arn: str) -> str | None:
    """The 12-digit account of an ARN (``arn:partition:service:region:account:…``), or None."""
    parts = (arn or "").split(":", 5)
    if len(parts) == 6 and parts[0] == "arn" and re.fullmatch(r"\d{12}", parts[4]):
        return parts[4]
    return None


def account_root_arn(principal: str) -> str | None:
    """``arn:<partition>:iam::<account>:root`` of the account ``principal`` belongs to."""
    match = _ARN.match(principal or "")
    return f"arn:{match.group(1)}:iam::{match.group(3)}:root" if match else None


def format_deadline(moment: datetime) -> str:
    """A deadline as IAM writes dates: ``2026-12-06T17:40:00Z`` (UTC, whole seconds)."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_deadline(text: str) -> datetime:
    """The inverse of :func:`format_deadline`; PolicyMismatch for any other spelling."""
    if not isinstance(text, str) or not _DEADLINE.match(text):
        raise PolicyMismatch(f"export window end {text!r} is not a date like 2026-01-31T12:00:00Z")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _statement(sid: str, principal: Any, actions: Any, condition: Any = None) -> dict[str, Any]:
    statement = {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": actions,
        "Resource": "*",
    }
    if condition is not None:
        statement["Condition"] = condition
    return statement


def render_policy(params: EnclaveKeyPolicy) -> dict[str, Any]:
    """The canonical policy document for ``params`` (what CreateKey or PutKeyPolicy is given)."""
    _check_params(params)
    attested = {PCR0_KEY: params.pcr0}
    if params.pcr8 is not None:
        attested[PCR8_KEY] = params.pcr8
    who = params.principal
    statements = [
        _statement(DECRYPT_SID, who, list(DECRYPT_ACTIONS), {"StringEqualsIgnoreCase": attested}),
        _statement(READ_SID, who, list(READ_ACTIONS)),
        _statement(DELETE_SID, who, "kms:ScheduleKeyDeletion"),
    ]
    if params.export_until is not None:
        window = {
            "StringEquals": {APP_KEY: params.app},
            "DateLessThan": {TIME_KEY: format_deadline(params.export_until)},
        }
        statements.append(_statement(EXPORT_SID, who, "kms:Encrypt", window))
    if params.account_root is not None:
        statements.append(
            _statement(ACCOUNT_ADMIN_SID, params.account_root, list(ACCOUNT_ADMIN_ACTIONS))
        )
    policy_id = MIGRATION_ID if params.export_until is not None else GENESIS_ID
    return {"Version": VERSION, "Id": policy_id, "Statement": statements}


def locked_policy(
    *, pcr0_hex: str, principal_arn: str, pcr8_hex: str | None = None
) -> dict[str, Any]:
    """The canonical policy of a first-boot key for one image (a :func:`render_policy` shortcut;
    hex in any case)."""
    pcr8 = pcr8_hex.lower() if pcr8_hex is not None else None
    params = EnclaveKeyPolicy(principal=principal_arn, pcr0=pcr0_hex.lower(), pcr8=pcr8)
    return render_policy(params)


def _check_params(params: EnclaveKeyPolicy) -> None:
    for name, value in (("pcr0", params.pcr0), ("pcr8", params.pcr8)):
        if value is None and name == "pcr8":
            continue
        if not isinstance(value, str) or not _HEX96.match(value):
            raise PolicyMismatch(f"{name} must be 96 lower-case hex characters")
        if set(value) == {"0"}:
            raise PolicyMismatch(
                f"{name} is all zero: that is what a debug-mode enclave reports, and a key "
                "locked to it would admit any image"
            )
    if not isinstance(params.principal, str) or not params.principal:
        raise PolicyMismatch("the principal must be named")
    if (params.export_until is None) != (params.app is None):
        raise PolicyMismatch("a migration key has both an app and an export window; others none")


# ---------------------------------------------------------------------- exact matching


def _as_sorted(value: Any, *, fold: bool = False) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in items):
        raise PolicyMismatch("a policy value that should be text is not")
    items = [v.lower() if fold else v for v in items]
    return sorted(items)


def _canonical_condition(condition: Any) -> dict[str, dict[str, list[str]]]:
    if not isinstance(condition, Mapping):
        raise PolicyMismatch("a Condition block is not an object")
    result: dict[str, dict[str, list[str]]] = {}
    for operator, tests in condition.items():
        if not isinstance(tests, Mapping):
            raise PolicyMismatch(f"condition {operator} is not an object")
        fold = str(operator).endswith("IgnoreCase")
        result[str(operator)] = {
            str(key).lower(): _as_sorted(value, fold=fold) for key, value in tests.items()
        }
    return result


def _canonical_statement(statement: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(statement, Mapping):
        raise PolicyMismatch("a statement is not an object")
    allowed = {"Sid", "Effect", "Principal", "Action", "Resource", "Condition"}
    extra = sorted(set(statement) - allowed)
    if extra:
        raise PolicyMismatch(f"a statement has the element {extra[0]}")
    sid = statement.get("Sid")
    if not isinstance(sid, str) or not sid:
        raise PolicyMismatch("a statement has no Sid")
    principal = statement.get("Principal")
    if not isinstance(principal, Mapping) or set(principal) != {"AWS"}:
        raise PolicyMismatch(f"statement {sid!r}: the principal is not one AWS principal list")
    canonical: dict[str, Any] = {
        "Effect": statement.get("Effect"),
        "Principal": _as_sorted(principal["AWS"]),
        "Action": _as_sorted(statement.get("Action"), fold=True),
        "Resource": _as_sorted(statement.get("Resource")),
    }
    if "Condition" in statement:
        canonical["Condition"] = _canonical_condition(statement["Condition"])
    return sid, canonical


def _canonical(policy: Mapping[str, Any]) -> dict[str, Any]:
    if set(policy) - {"Version", "Id", "Statement"}:
        extra = sorted(set(policy) - {"Version", "Id", "Statement"})[0]
        raise PolicyMismatch(f"the policy has the top-level element {extra}")
    statements = policy.get("Statement")
    if not isinstance(statements, list):
        raise PolicyMismatch("the policy's Statement is not a list")
    by_sid: dict[str, Any] = {}
    for statement in statements:
        sid, canonical = _canonical_statement(statement)
        if sid in by_sid:
            raise PolicyMismatch(f"two statements share the Sid {sid!r}")
        by_sid[sid] = canonical
    return {"Version": policy.get("Version"), "Id": policy.get("Id"), "Statement": by_sid}


def _recover(policy: Mapping[str, Any]) -> EnclaveKeyPolicy:
    """Read the parameters a canonical policy would have been rendered from (unchecked)."""
    statements = {s.get("Sid"): s for s in policy.get("Statement") or [] if isinstance(s, Mapping)}
    decrypt = statements.get(DECRYPT_SID)
    if decrypt is None:
        raise PolicyMismatch(f"the policy has no {DECRYPT_SID!r} statement")
    principals = _as_sorted((decrypt.get("Principal") or {}).get("AWS"))
    if len(principals) != 1:
        raise PolicyMismatch(f"statement {DECRYPT_SID!r} must name exactly one principal")
    tests = _canonical_condition(decrypt.get("Condition") or {}).get("StringEqualsIgnoreCase", {})
    pcr0 = tests.get(PCR0_KEY.lower(), [None])
    pcr8 = tests.get(PCR8_KEY.lower())
    if len(pcr0) != 1 or not isinstance(pcr0[0], str) or (pcr8 is not None and len(pcr8) != 1):
        raise PolicyMismatch(f"statement {DECRYPT_SID!r} must admit exactly one PCR0 (and PCR8)")
    app, until = None, None
    window = statements.get(EXPORT_SID)
    if window is not None:
        condition = _canonical_condition(window.get("Condition") or {})
        apps = condition.get("StringEquals", {}).get(APP_KEY.lower(), [])
        ends = condition.get("DateLessThan", {}).get(TIME_KEY.lower(), [])
        if len(apps) != 1 or len(ends) != 1:
            raise PolicyMismatch(f"statement {EXPORT_SID!r} must name one app and one window end")
        app, until = apps[0], parse_deadline(ends[0])
    admin = statements.get(ACCOUNT_ADMIN_SID)
    root = None
    if admin is not None:
        roots = _as_sorted((admin.get("Principal") or {}).get("AWS"))
        if len(roots) != 1:
            raise PolicyMismatch(f"statement {ACCOUNT_ADMIN_SID!r} must name one account")
        root = roots[0]
    return EnclaveKeyPolicy(
        principal=principals[0],
        pcr0=pcr0[0].lower(),
        pcr8=pcr8[0].lower() if pcr8 else None,
        app=app,
        export_until=until,
        account_root=root,
    )


def _first_difference(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    for field in ("Version", "Id"):
        if expected[field] != actual[field]:
            return f"its {field} is {actual[field]!r}, expected {expected[field]!r}"
    want, got = expected["Statement"], actual["Statement"]
    for sid in sorted(set(got) - set(want)):
        return f"it has a statement {sid!r} that the enclave's policy does not have"
    for sid in sorted(set(want) - set(got)):
        return f"it lacks the statement {sid!r}"
    for sid in sorted(want):
        for element in sorted(set(want[sid]) | set(got[sid])):
            if want[sid].get(element) != got[sid].get(element):
                return f"statement {sid!r} differs in its {element}"
    return "it differs"  # pragma: no cover - the callers compare first


def match_policy(policy: Any) -> EnclaveKeyPolicy:
    """Return the parameters whose :func:`render_policy` is exactly ``policy``.

    :raises PolicyMismatch: naming the first place where ``policy`` is not canonical.
    """
    if not isinstance(policy, Mapping):
        raise PolicyMismatch("the key policy is not a JSON object")
    actual = _canonical(policy)
    params = _recover(policy)
    try:
        expected = _canonical(render_policy(params))
    except PolicyMismatch as exc:
        raise PolicyMismatch(f"the policy names {exc}") from None
    if expected != actual:
        why = _first_difference(expected, actual)
        raise PolicyMismatch(f"the key policy is not the enclave's canonical policy: {why}")
    return params


def policy_sha256(policy: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a policy's canonical form, the same for every equal spelling."""
    canonical = _canonical(policy)
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()
