"""Key policy evaluation (an IAM truth table), as the local KMS runs it on every call."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from enclave_core.errors import ValidationError
from enclave_core.kmspolicy.canonical import locked_policy
from enclave_core.kmspolicy.evaluation import (
    RequestContext,
    authorize,
    evaluate,
    grant_allows,
    grant_narrows,
    parse_policy_text,
    validate_policy,
)
from enclave_core.plugin.interfaces import GrantInfo

ROLE = "arn:aws:iam::111122223333:role/enclave"
OTHER_ROLE = "arn:aws:iam::111122223333:role/admin"
STRANGER = "arn:aws:iam::999999999999:role/enclave"
ROOT = "arn:aws:iam::111122223333:root"
PCR0 = "ab" * 48
PCR0_B = "cd" * 48
PCRS = {0: bytes.fromhex(PCR0), 1: bytes(range(48)), 8: b"\x08" * 48}
ATTESTED = RequestContext(pcrs=PCRS)
NO_DOC = RequestContext()


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action: Any = "kms:Decrypt", principal: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "Effect": "Allow",
        "Principal": principal if principal is not None else {"AWS": ROLE},
        "Action": action,
        "Resource": "*",
        **extra,
    }


def deny(action: Any = "kms:Decrypt", principal: Any = "*", **extra: Any) -> dict[str, Any]:
    return {**allow(action, principal, **extra), "Effect": "Deny"}


def pcr0_condition(values: Any, operator: str = "StringEqualsIgnoreCase") -> dict[str, Any]:
    return {"Condition": {operator: {"kms:RecipientAttestation:PCR0": values}}}


def allowed(
    doc: dict[str, Any],
    action: str = "kms:Decrypt",
    principal: str = ROLE,
    context: RequestContext = ATTESTED,
) -> bool:
    return evaluate(doc, action=action, principal=principal, context=context).allowed


# ------------------------------------------------------------------ actions and principals


@pytest.mark.parametrize(
    ("action_element", "action", "expected"),
    [
        ("kms:Decrypt", "kms:Decrypt", True),
        ("kms:decrypt", "kms:Decrypt", True),  # action names are case-insensitive
        ("kms:Encrypt", "kms:Decrypt", False),
        ("kms:*", "kms:PutKeyPolicy", True),
        ("*", "kms:Decrypt", True),
        ("kms:Generate*", "kms:GenerateDataKey", True),
        ("kms:Generate*", "kms:Decrypt", False),
        ("kms:Decryp?", "kms:Decrypt", True),
        (["kms:Encrypt", "kms:Decrypt"], "kms:Decrypt", True),
        (["kms:Encrypt"], "kms:Decrypt", False),
        ("kms:Decrypt.*", "kms:DecryptX", False),  # no regex leaks through
    ],
)
def test_action_matching(action_element: Any, action: str, expected: bool) -> None:
    assert allowed(policy(allow(action_element)), action) is expected


@pytest.mark.parametrize(
    ("principal_element", "caller", "expected"),
    [
        ("*", STRANGER, True),
        ({"AWS": "*"}, STRANGER, True),
        ({"AWS": ROLE}, ROLE, True),
        ({"AWS": ROLE}, OTHER_ROLE, False),
        ({"AWS": [OTHER_ROLE, ROLE]}, ROLE, True),
        ({"AWS": ROOT}, OTHER_ROLE, True),  # the account root stands for the whole account
        ({"AWS": ROOT}, STRANGER, False),
        ({"AWS": "111122223333"}, ROLE, True),
        ({"AWS": "arn:aws-cn:iam::111122223333:root"}, ROLE, False),  # another partition
        ({"AWS": ROLE}, "arn:aws:sts::111122223333:assumed-role/enclave/i-0abc", True),
        ({"Service": "ec2.amazonaws.com"}, ROLE, False),
        ("arn:aws:iam::111122223333:role/enclave", ROLE, False),  # must be "*" or a map
    ],
)
def test_principal_matching(principal_element: Any, caller: str, expected: bool) -> None:
    assert allowed(policy(allow(principal=principal_element)), principal=caller) is expected


def test_no_statement_denies_and_names_action_and_principal() -> None:
    decision = evaluate(policy(), action="kms:Decrypt", principal=ROLE, context=ATTESTED)
    assert not decision.allowed
    assert decision.reason == f"no statement allows kms:Decrypt for {ROLE}"


# ------------------------------------------------------------------ Deny precedence


def test_explicit_deny_wins_over_any_allow() -> None:
    doc = policy(allow("kms:*", {"AWS": ROOT}), deny("kms:Decrypt", {"AWS": ROLE}, Sid="NoDecrypt"))
    decision = evaluate(doc, action="kms:Decrypt", principal=ROLE, context=ATTESTED)
    assert decision.allowed is False
    assert decision.reason == "kms:Decrypt is explicitly denied by statement 'NoDecrypt' (#1)"
    assert allowed(doc, "kms:Encrypt")
    assert allowed(doc, principal=OTHER_ROLE)  # the Deny names only the enclave role


def test_conditional_deny_applies_only_when_its_condition_holds() -> None:
    doc = policy(allow("kms:*"), deny(**pcr0_condition(PCR0_B)))
    assert allowed(doc)  # attested PCR0 is PCR0, not PCR0_B
    assert allowed(doc, context=NO_DOC)  # absent key: the Deny's condition is not met
    assert not allowed(doc, context=RequestContext(pcrs={0: bytes.fromhex(PCR0_B)}))


@pytest.mark.parametrize(
    "odd_deny",
    [
        deny(NotAction="kms:Encrypt"),
        deny(NotPrincipal={"AWS": OTHER_ROLE}),
        deny(Condition={"StringEqualsIfExists": {"kms:RecipientAttestation:PCR0": PCR0_B}}),
        deny(Condition={"StringEquals": {"aws:SourceVpce": "vpce-1"}}),
    ],
)
def test_unsupported_deny_fails_closed(odd_deny: dict[str, Any]) -> None:
    assert not allowed(policy(allow("kms:*"), odd_deny))


# ------------------------------------------------------------------ conditions


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (pcr0_condition(PCR0), True),
        (pcr0_condition(PCR0.upper()), True),  # IgnoreCase
        (pcr0_condition(PCR0.upper(), "StringEquals"), False),  # request values are lower-case
        (pcr0_condition(PCR0, "StringEquals"), True),
        (pcr0_condition([PCR0_B, PCR0]), True),  # a list is any-of
        (pcr0_condition([PCR0_B]), False),
        (pcr0_condition([]), False),
        (pcr0_condition(7), False),  # not a string: never met
        (pcr0_condition(PCR0[:90] + "*", "StringLike"), True),
        (pcr0_condition("ab?b*", "StringLike"), True),
        (pcr0_condition("AB*", "StringLike"), False),  # StringLike is case-sensitive
        (
            {
                "Condition": {
                    "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0}
                }
            },
            True,
        ),
        (
            {
                "Condition": {
                    "StringEquals": {"KMS:recipientattestation:pcr1": bytes(range(48)).hex()}
                }
            },
            True,
        ),
        ({"Condition": {"StringEquals": {"kms:RecipientAttestation:PCR8": "08" * 48}}}, True),
        ({"Condition": {"StringEquals": {"kms:RecipientAttestation:PCR2": "00" * 48}}}, False),
        ({"Condition": {"StringEquals": {"kms:RecipientAttestation:PCR99": "00"}}}, False),
        ({"Condition": {"StringEquals": {"kms:RecipientAttestation:Nope": PCR0}}}, False),
        ({"Condition": {"StringEqualsIfExists": {"kms:RecipientAttestation:PCR0": PCR0}}}, False),
        (
            {"Condition": {"ForAnyValue:StringEquals": {"kms:RecipientAttestation:PCR0": PCR0}}},
            False,
        ),
        ({"Condition": {"StringEquals": {"aws:PrincipalArn": ROLE}}}, False),  # unknown key
        ({"Condition": "StringEquals"}, False),
        ({"Condition": {"StringEquals": {}}}, False),
    ],
)
def test_attestation_conditions(condition: dict[str, Any], expected: bool) -> None:
    assert allowed(policy(allow(**condition))) is expected


def test_all_conditions_must_hold() -> None:
    condition = {
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": PCR0},
        "StringEquals": {"kms:RecipientAttestation:PCR8": "00" * 48},
    }
    assert not allowed(policy(allow(Condition=condition)))
    condition["StringEquals"]["kms:RecipientAttestation:PCR8"] = "08" * 48
    assert allowed(policy(allow(Condition=condition)))


def test_missing_attestation_fails_closed_and_says_why() -> None:
    doc = policy(allow(Sid="EnclaveDecrypt", **pcr0_condition(PCR0)))
    decision = evaluate(doc, action="kms:Decrypt", principal=ROLE, context=NO_DOC)
    assert not decision.allowed
    assert decision.reason == (
        "condition not met: statement 'EnclaveDecrypt' (#0) allows kms:Decrypt only when "
        "StringEqualsIgnoreCase kms:RecipientAttestation:PCR0 (the request has no attestation "
        "document)"
    )
    other = RequestContext(pcrs={0: bytes.fromhex(PCR0_B)})
    reason = evaluate(doc, action="kms:Decrypt", principal=ROLE, context=other).reason
    assert reason.endswith("(the request's value differs)")
    assert PCR0_B not in reason  # request data is never echoed


def test_encryption_context_conditions() -> None:
    doc = policy(
        allow(Condition={"StringEquals": {"kms:EncryptionContext:purpose": "storage-dek"}})
    )
    assert allowed(doc, context=RequestContext({"purpose": "storage-dek"}))
    assert allowed(doc, context=RequestContext({"Purpose": "storage-dek"}))  # key name: any case
    assert not allowed(doc, context=RequestContext({"purpose": "Storage-DEK"}))
    assert not allowed(doc, context=RequestContext({"app": "hello"}))
    ambiguous = RequestContext({"purpose": "storage-dek", "PURPOSE": "x"})
    assert not allowed(doc, context=ambiguous)


@pytest.mark.parametrize("element", ["NotAction", "NotPrincipal", "NotResource"])
def test_allow_with_not_elements_never_matches(element: str) -> None:
    statement = allow("kms:*")
    statement[element] = "kms:Encrypt" if element == "NotAction" else {"AWS": OTHER_ROLE}
    assert not allowed(policy(statement))


def test_malformed_policies_allow_nothing() -> None:
    for doc in (
        {},
        {"Statement": "x"},
        {"Statement": [1, "a"]},
        {"Statement": [{"Effect": "allow"}]},
    ):
        assert not allowed(doc)
    single = {"Version": "2012-10-17", "Statement": allow()}  # one statement, not a list
    assert allowed(single)


# ------------------------------------------------------------------ locked policy


def test_locked_policy_lets_only_the_attested_image_get_plaintext() -> None:
    doc = locked_policy(pcr0_hex=PCR0.upper(), principal_arn=ROLE)
    for action in ("kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom"):
        assert allowed(doc, action)
        assert not allowed(doc, action, context=NO_DOC)
        assert not allowed(doc, action, context=RequestContext(pcrs={0: bytes.fromhex(PCR0_B)}))
        assert not allowed(doc, action, principal=OTHER_ROLE)
    for action in ("kms:DescribeKey", "kms:GetKeyPolicy", "kms:ScheduleKeyDeletion"):
        assert allowed(doc, action, context=NO_DOC)
    for action in (
        "kms:Encrypt",
        "kms:PutKeyPolicy",
        "kms:CreateGrant",
        "kms:ReplicateKey",
        "kms:ReEncryptFrom",
        "kms:CancelKeyDeletion",
        "kms:DisableKey",
        "kms:GenerateDataKeyWithoutPlaintext",
    ):
        assert not allowed(doc, action), action
        assert not allowed(doc, action, principal=ROOT)
    text = str(doc)
    assert (
        "root" not in text
        and "kms:*" not in text
        and "'*'" not in text.replace("'Resource': '*'", "")
    )


def test_validate_policy() -> None:
    good = policy(allow())
    copy = validate_policy(good)
    assert copy == good and copy is not good
    for bad in (
        {},
        {"Version": "2012-10-17"},
        {"Version": 1, "Statement": []},
        {"Version": "x", "Statement": [1]},
    ):
        with pytest.raises(ValidationError):
            validate_policy(bad)
    with pytest.raises(ValidationError, match="not JSON"):
        validate_policy({"Version": "x", "Statement": [{"Action": b"bytes"}]})


# ------------------------------------------------------------------ the Resource element

KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/ffffffff-12ab-34cd-56ef-1234567890ab"


def on_key(doc: dict[str, Any], action: str = "kms:Decrypt") -> bool:
    """Whether ``ROLE`` may call ``action`` on the key ``KEY_ARN``."""
    return evaluate(doc, action=action, principal=ROLE, context=ATTESTED, resource=KEY_ARN).allowed


def without_resource(statement: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in statement.items() if k != "Resource"}


def test_an_allow_without_resource_allows_nothing() -> None:
    doc = policy(without_resource(allow("kms:*", Sid="NoResource")))
    assert not on_key(doc)
    decision = evaluate(doc, action="kms:Decrypt", principal=ROLE, context=ATTESTED)
    assert not decision.allowed
    assert "'NoResource' (#0) has no Resource element" in decision.reason


def test_a_deny_without_resource_denies_nothing() -> None:
    doc = policy(allow("kms:*"), without_resource(deny("kms:*")))
    assert on_key(doc)
    assert on_key(doc, "kms:PutKeyPolicy")


def test_a_deny_naming_another_key_denies_nothing() -> None:
    doc = policy(allow("kms:*"), {**deny("kms:Decrypt"), "Resource": OTHER_KEY_ARN})
    assert on_key(doc)
    # ... and the same Deny naming this key, or every key, applies.
    for resource in (KEY_ARN, [OTHER_KEY_ARN, KEY_ARN], "*", "arn:aws:kms:*:111122223333:key/*"):
        denying = policy(allow("kms:*"), {**deny("kms:Decrypt"), "Resource": resource})
        decision = evaluate(
            denying, action="kms:Decrypt", principal=ROLE, context=ATTESTED, resource=KEY_ARN
        )
        assert not decision.allowed and decision.explicit_deny, resource


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("*", True),
        (KEY_ARN, True),
        ([OTHER_KEY_ARN, KEY_ARN], True),
        ("arn:aws:kms:eu-west-1:111122223333:key/*", True),
        ("arn:aws:kms:eu-west-1:111122223333:key/1234abcd-????-*", True),
        (OTHER_KEY_ARN, False),
        (KEY_ARN.upper(), False),  # ARNs match case-sensitively
        ("arn:aws:kms:eu-west-1:111122223333:alias/*", False),
        ([], False),
        (7, False),
    ],
)
def test_an_allow_applies_only_to_the_keys_its_resource_names(
    resource: Any, expected: bool
) -> None:
    assert on_key(policy({**allow("kms:*"), "Resource": resource})) is expected


def test_without_the_key_arn_only_a_star_resource_is_known() -> None:
    named = {**allow("kms:*"), "Resource": KEY_ARN}
    assert not allowed(policy(named))  # no ARN given: this Allow cannot be shown to apply
    assert allowed(policy(allow("kms:*")))  # "*"
    # A Deny whose Resource cannot be matched applies (unknowns count against the caller).
    assert not allowed(policy(allow("kms:*"), {**deny("kms:Decrypt"), "Resource": KEY_ARN}))
    assert not on_key(policy(allow("kms:*"), {**deny("kms:Decrypt"), "Resource": 7}))


def test_not_resource_keeps_its_fail_closed_meaning() -> None:
    allow_not = {**without_resource(allow("kms:*")), "NotResource": OTHER_KEY_ARN}
    assert not on_key(policy(allow_not))
    deny_not = {**without_resource(deny("kms:Decrypt")), "NotResource": KEY_ARN}
    assert not on_key(policy(allow("kms:*"), deny_not))


# ------------------------------------------------------------------ time conditions

DEADLINE = "2030-01-01T00:00:00Z"
BEFORE = RequestContext(pcrs=PCRS, now=datetime(2029, 12, 31, 23, 59, 59, tzinfo=UTC))
AT = RequestContext(pcrs=PCRS, now=datetime(2030, 1, 1, tzinfo=UTC))
AFTER = RequestContext(pcrs=PCRS, now=datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC))


def until(operator: str, value: Any, action: str = "kms:Encrypt") -> dict[str, Any]:
    return policy(allow(action, Condition={operator: {"aws:CurrentTime": value}}))


def test_an_encrypt_allowed_until_a_deadline() -> None:
    doc = until("DateLessThan", DEADLINE)
    assert allowed(doc, "kms:Encrypt", context=BEFORE)
    decision = evaluate(doc, action="kms:Encrypt", principal=ROLE, context=AFTER)
    assert not decision.allowed
    assert decision.reason.endswith(
        "DateLessThan aws:CurrentTime (the request's time is outside it)"
    )
    assert not allowed(doc, "kms:Encrypt", context=AT)
    assert allowed(until("DateLessThanEquals", DEADLINE), "kms:Encrypt", context=AT)


@pytest.mark.parametrize(
    ("operator", "value", "context", "expected"),
    [
        ("DateGreaterThan", DEADLINE, AFTER, True),
        ("DateGreaterThan", DEADLINE, AT, False),
        ("DateGreaterThanEquals", DEADLINE, AT, True),
        ("DateGreaterThanEquals", DEADLINE, BEFORE, False),
        ("DateLessThan", "2030-01-01T01:00:00+01:00", BEFORE, True),  # the same instant
        ("DateLessThan", "2030-01-01T01:00:00+01:00", AT, False),
        ("DateLessThan", "2030-01-01", BEFORE, True),  # a date alone: midnight UTC
        ("DateLessThan", "1893456000", BEFORE, True),  # epoch seconds of the deadline
        ("DateLessThan", "1893456000", AT, False),
        ("DateLessThan", ["2000-01-01T00:00:00Z", DEADLINE], BEFORE, True),  # any of
        ("DateLessThan", "aws:CurrentTime", BEFORE, False),  # malformed: never met
        ("DateLessThan", "2030-13-01T00:00:00Z", BEFORE, False),
        ("DateLessThan", 1893456000, BEFORE, False),  # not a string
        ("DateLessThan", [], BEFORE, False),
        ("DateLessThanIfExists", DEADLINE, BEFORE, False),  # unsupported operator
    ],
)
def test_date_operators(operator: str, value: Any, context: RequestContext, expected: bool) -> None:
    assert allowed(until(operator, value), "kms:Encrypt", context=context) is expected


def test_date_operators_need_aws_current_time() -> None:
    for key in ("aws:EpochTime", "kms:EncryptionContext:until"):
        doc = policy(allow("kms:Encrypt", Condition={"DateLessThan": {key: DEADLINE}}))
        assert not allowed(doc, "kms:Encrypt", context=BEFORE)
    # String operators do not read aws:CurrentTime: unknown, never met.
    doc = policy(allow(Condition={"StringLike": {"aws:CurrentTime": "*"}}))
    assert not allowed(doc, context=BEFORE)


def test_a_deny_after_a_deadline_and_a_malformed_date_deny() -> None:
    doc = policy(
        allow("kms:*"),
        deny("kms:Decrypt", Condition={"DateGreaterThan": {"aws:CurrentTime": DEADLINE}}),
    )
    assert allowed(doc, context=BEFORE)
    assert not allowed(doc, context=AFTER)
    malformed = policy(
        allow("kms:*"),
        deny("kms:Decrypt", Condition={"DateGreaterThan": {"aws:CurrentTime": "soon"}}),
    )
    decision = evaluate(malformed, action="kms:Decrypt", principal=ROLE, context=BEFORE)
    assert not decision.allowed and decision.explicit_deny


def test_without_now_the_real_clock_is_read() -> None:
    past = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert not allowed(until("DateLessThan", past), "kms:Encrypt")
    assert allowed(until("DateLessThan", future), "kms:Encrypt")
    naive = RequestContext(now=datetime(2029, 12, 31, 23, 59, 59))  # taken as UTC
    assert allowed(until("DateLessThan", DEADLINE), "kms:Encrypt", context=naive)
    assert BEFORE.lookup("AWS:CurrentTime") == "2029-12-31T23:59:59Z"


# ------------------------------------------------------------------ policy text


def test_parse_policy_text_refuses_duplicate_keys_at_any_depth() -> None:
    good = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*"}]}'
    assert parse_policy_text(good)["Statement"][0]["Effect"] == "Allow"
    top = '{"Version": "2012-10-17", "Version": "2008-10-17", "Statement": []}'
    nested = (
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "kms:*",'
        ' "Principal": "*", "Resource": "*", "Effect": "Allow"}]}'
    )
    deep = (
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Condition": '
        '{"StringEquals": {"kms:EncryptionContext:app": "a", "kms:EncryptionContext:app": "b"}}}]}'
    )
    for text, name in ((top, "Version"), (nested, "Effect"), (deep, "kms:EncryptionContext:app")):
        with pytest.raises(ValidationError) as raised:
            parse_policy_text(text)
        assert str(raised.value) == f"key policy: duplicate key {name!r} in one object"
        with pytest.raises(ValidationError, match="duplicate key"):
            validate_policy(text)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '"policy"',
        "null",
        "",
        "{",
        '{"Version": NaN, "Statement": []}',
        '{"Version": "1", "Statement": [], "x": Infinity}',
        '{"Version": "1", "Statement": [], "x": -Infinity}',
    ],
)
def test_parse_policy_text_refuses_what_is_not_a_json_object(text: str) -> None:
    with pytest.raises(ValidationError, match="^key policy: "):
        parse_policy_text(text)


def test_validate_policy_takes_text_and_refuses_nan_in_documents() -> None:
    doc = policy(allow())
    assert validate_policy(json.dumps(doc)) == doc
    with pytest.raises(ValidationError, match="not JSON"):
        validate_policy({"Version": "1", "Statement": [{"x": float("nan")}]})
    with pytest.raises(ValidationError, match="must be a string"):
        parse_policy_text(b"{}")  # type: ignore[arg-type]


# ------------------------------------------------------------------ grants

GRANTEE = "arn:aws:iam::111122223333:role/attacker"


def grant(*operations: str, **extra: Any) -> GrantInfo:
    return GrantInfo(
        grant_id="g" * 64,
        key_id=KEY_ARN,
        grantee_principal=extra.pop("grantee", GRANTEE),
        operations=operations,
        **extra,
    )


def decide(
    doc: dict[str, Any],
    grants: list[GrantInfo],
    action: str = "kms:Decrypt",
    principal: str = GRANTEE,
    context: RequestContext = NO_DOC,
) -> bool:
    return authorize(
        doc, grants, action=action, principal=principal, context=context, resource=KEY_ARN
    ).allowed


def test_a_grant_allows_what_the_policy_does_not() -> None:
    locked = locked_policy(pcr0_hex=PCR0, principal_arn=ROLE)
    assert not decide(locked, [])
    assert decide(locked, [grant("Decrypt")])
    decision = authorize(
        locked, [grant("Decrypt")], action="kms:Decrypt", principal=GRANTEE, context=NO_DOC
    )
    assert decision.reason == f"kms:Decrypt is allowed by grant {'g' * 64}"
    assert not decide(locked, [grant("Encrypt")])  # another operation
    assert not decide(locked, [grant("Decrypt")], principal=OTHER_ROLE)  # another grantee
    session = "arn:aws:sts::111122223333:assumed-role/attacker/i-0abc"
    assert decide(locked, [grant("Decrypt")], principal=session)  # the role's session
    # Grants give only grant operations, whatever they list.
    assert not decide(locked, [grant("PutKeyPolicy")], "kms:PutKeyPolicy")
    assert not decide(locked, [grant("ListGrants")], "kms:ListGrants")


def test_an_explicit_deny_beats_a_grant() -> None:
    doc = policy(allow("kms:*", {"AWS": ROOT}), deny("kms:Decrypt", {"AWS": GRANTEE}))
    assert not decide(doc, [grant("Decrypt")])
    assert decide(doc, [grant("Decrypt", "Encrypt")], "kms:Encrypt")


def test_grant_constraints_check_the_encryption_context() -> None:
    subset = grant("Decrypt", encryption_context_subset={"app": "hello"})
    equals = grant("Decrypt", encryption_context_equals={"app": "hello"})
    for context, subset_ok, equals_ok in (
        ({"app": "hello"}, True, True),
        ({"app": "hello", "purpose": "x"}, True, False),
        ({"app": "Hello"}, False, False),  # case-sensitive
        ({"APP": "hello"}, False, False),
        ({}, False, False),
    ):
        request = RequestContext(encryption_context=context)
        assert (
            grant_allows(
                subset, action="kms:Decrypt", principal=GRANTEE, encryption_context=context
            )
            is subset_ok
        )
        assert decide(policy(), [equals], context=request) is equals_ok


def test_grant_narrows() -> None:
    parent = grant("Decrypt", "CreateGrant", encryption_context_subset={"app": "a"})
    assert grant_narrows(parent, grant("Decrypt", encryption_context_subset={"app": "a"}))
    assert grant_narrows(parent, grant("Decrypt", encryption_context_equals={"app": "a", "x": "y"}))
    assert not grant_narrows(parent, grant("Decrypt"))  # no constraint: wider
    assert not grant_narrows(parent, grant("Encrypt", encryption_context_subset={"app": "a"}))
    assert not grant_narrows(parent, grant("Decrypt", encryption_context_subset={"app": "b"}))
    exact = grant("Decrypt", "CreateGrant", encryption_context_equals={"app": "a"})
    assert grant_narrows(exact, grant("Decrypt", encryption_context_equals={"app": "a"}))
    assert not grant_narrows(exact, grant("Decrypt", encryption_context_subset={"app": "a"}))
    assert grant_narrows(grant("Decrypt", "Encrypt"), grant("Encrypt"))
