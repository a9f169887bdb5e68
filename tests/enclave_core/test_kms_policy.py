"""Key policy evaluation (an IAM truth table), the locked policy and the lock analysis."""

from __future__ import annotations

from typing import Any

import pytest

from enclave_core.errors import ValidationError
from enclave_core.kms_policy import (
    RequestContext,
    analyse,
    default_policy,
    evaluate,
    locked_policy,
    validate_policy,
)

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
    analysis = analyse(doc, pcr0_hex=PCR0)
    assert analysis.locked and not analysis.unconditioned_decrypt
    assert analysis.attested_pcr0 == {PCR0}
    assert analysis.reasons == []


# ------------------------------------------------------------------ analysis


def test_default_policy_is_unlocked_and_decrypts_without_attestation() -> None:
    analysis = analyse(default_policy("111122223333"), pcr0_hex=PCR0)
    assert not analysis.locked and analysis.unconditioned_decrypt
    assert analysis.attested_pcr0 == set()
    assert any(
        "'Enable IAM User Permissions' (#0)" in r and "kms:PutKeyPolicy" in r
        for r in analysis.reasons
    )
    assert f"no statement lets PCR0 {PCR0[:16]}… decrypt" in analysis.reasons


def test_cdk_style_policy_is_unlocked() -> None:
    doc = policy(
        allow("kms:*", {"AWS": ROOT}, Sid="Root"),
        allow(["kms:PutKeyPolicy", "kms:GetKeyPolicy"], Sid="Role"),
    )
    analysis = analyse(doc)
    assert not analysis.locked and analysis.unconditioned_decrypt
    assert any(r.startswith("statement 'Role' (#1) lets " + ROLE) for r in analysis.reasons)


def test_two_pcr0_values_are_both_reported() -> None:
    doc = policy(
        allow(
            ["kms:Decrypt", "kms:GenerateDataKey"],
            Sid="Two",
            **pcr0_condition([PCR0.upper(), PCR0_B]),
        )
    )
    analysis = analyse(doc, pcr0_hex=PCR0)
    assert analysis.locked and not analysis.unconditioned_decrypt
    assert analysis.attested_pcr0 == {PCR0, PCR0_B}
    assert "statement 'Two' (#0) lets 2 images (PCR0 values) decrypt" in analysis.reasons


def test_image_sha384_counts_like_pcr0_and_conditions_intersect() -> None:
    doc = policy(
        allow(Condition={"StringEquals": {"kms:RecipientAttestation:ImageSha384": [PCR0, PCR0_B]}}),
        allow(
            "kms:GenerateDataKey",
            Condition={
                "StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0},
                "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": [PCR0, PCR0_B]},
            },
        ),
    )
    assert analyse(doc).attested_pcr0 == {PCR0, PCR0_B}
    assert analyse(policy(doc["Statement"][1])).attested_pcr0 == {PCR0}


def test_put_key_policy_granted_to_root_unlocks() -> None:
    doc = locked_policy(pcr0_hex=PCR0, principal_arn=ROLE)
    doc["Statement"].append(allow("kms:PutKeyPolicy", {"AWS": ROOT}, Sid="Admin"))
    analysis = analyse(doc, pcr0_hex=PCR0)
    assert not analysis.locked and not analysis.unconditioned_decrypt
    assert analysis.reasons == [
        f"statement 'Admin' (#3) lets {ROOT} call kms:PutKeyPolicy: the policy can change"
    ]


@pytest.mark.parametrize(
    "extra",
    [
        allow("kms:Create*", Sid="Grants"),
        allow("kms:ReplicateKey", {"AWS": ROOT}),
        allow("kms:Put*", {"AWS": ROOT}, **pcr0_condition(PCR0)),  # conditions do not help
        allow(NotAction="kms:Decrypt"),
        {"Effect": "Allow", "NotPrincipal": {"AWS": ROLE}, "Action": "kms:CreateGrant"},
    ],
)
def test_anything_that_can_change_the_policy_unlocks(extra: dict[str, Any]) -> None:
    doc = locked_policy(pcr0_hex=PCR0, principal_arn=ROLE)
    doc["Statement"].append(extra)
    assert analyse(doc).locked is False


@pytest.mark.parametrize(
    "extra",
    [
        allow("kms:Decrypt", Sid="Open"),
        allow("kms:ReEncrypt*"),
        allow("kms:GenerateDataKey", "*"),
        allow(Condition={"StringEquals": {"kms:EncryptionContext:app": "hello"}}),
        allow(**pcr0_condition(PCR0, "StringLike")),  # not an exact pin
        allow(**pcr0_condition(7)),
    ],
)
def test_decrypt_without_an_attestation_pin_is_unconditioned(extra: dict[str, Any]) -> None:
    doc = locked_policy(pcr0_hex=PCR0, principal_arn=ROLE)
    doc["Statement"].append(extra)
    analysis = analyse(doc, pcr0_hex=PCR0)
    assert analysis.locked and analysis.unconditioned_decrypt
    assert any("without an attestation condition" in r and "#3" in r for r in analysis.reasons)


def test_blanket_deny_takes_actions_away() -> None:
    doc = policy(
        allow("kms:*", {"AWS": ROOT}),
        deny(
            [
                "kms:PutKeyPolicy",
                "kms:CreateGrant",
                "kms:ReplicateKey",
                "kms:Decrypt",
                "kms:ReEncrypt*",
                "kms:GenerateDataKey*",
            ]
        ),
        allow(["kms:Decrypt"], **pcr0_condition(PCR0)),  # denied as well
    )
    analysis = analyse(doc)
    assert analysis.locked and not analysis.unconditioned_decrypt
    assert analysis.attested_pcr0 == set()
    conditional = policy(
        allow("kms:*", {"AWS": ROOT}), deny("kms:PutKeyPolicy", Condition={"Bool": {}})
    )
    assert not analyse(conditional).locked  # a conditional Deny is not relied on


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
