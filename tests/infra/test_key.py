"""The stack's KMS key: the runtime's locked policy from creation, and who may do what."""

from __future__ import annotations

from typing import Any

import pytest
from enclave_infra.key import ACCOUNT_ADMIN_ACTIONS, ACCOUNT_ADMIN_SID, normalize_pcr0

from enclave_core.errors import ConfigError
from enclave_core.kmspolicy.canonical import locked_policy, match_policy
from enclave_core.kmspolicy.conditions import RequestContext
from enclave_core.kmspolicy.evaluation import evaluate
from tests.infra.synthesis import ACCOUNT, PCR0, Synthesized, text

ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/EnclaveHostRole"
ROOT_ARN = f"arn:aws:iam::{ACCOUNT}:root"


def _role_id(stack: Synthesized) -> str:
    return stack.one("AWS::IAM::Role")[0]


def _concrete(value: Any, role_id: str) -> Any:
    """The key policy with its role and account tokens replaced by the ARNs they deploy as."""
    if isinstance(value, dict):
        if value == {"Fn::GetAtt": [role_id, "Arn"]}:
            return ROLE_ARN
        if "Fn::Join" in value:
            return (
                text(value).replace("<AWS::Partition>", "aws").replace("<AWS::AccountId>", ACCOUNT)
            )
        return {k: _concrete(v, role_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_concrete(v, role_id) for v in value]
    return value


def test_the_key_policy_is_the_runtimes_locked_policy_plus_account_administration(
    single: Synthesized,
) -> None:
    _, key = single.one("AWS::KMS::Key")
    policy = key["Properties"]["KeyPolicy"]
    locked = locked_policy(pcr0_hex=PCR0, principal_arn=ROLE_ARN)
    deployed = _concrete(policy, _role_id(single))  # the role's ARN where CloudFormation puts it
    assert deployed["Id"] == locked["Id"]
    assert deployed["Statement"][:3] == locked["Statement"]
    admin = policy["Statement"][3]
    assert admin["Sid"] == ACCOUNT_ADMIN_SID and "Condition" not in admin
    assert text(admin["Principal"]["AWS"]) == "arn:<AWS::Partition>:iam::<AWS::AccountId>:root"
    assert admin["Action"] == list(ACCOUNT_ADMIN_ACTIONS)
    assert len(policy["Statement"]) == 4


def test_the_key_policy_is_exactly_what_the_runtime_accepts(single: Synthesized) -> None:
    _, key = single.one("AWS::KMS::Key")
    deployed = _concrete(key["Properties"]["KeyPolicy"], _role_id(single))
    params = match_policy(deployed)  # the runtime's own check at boot
    assert (params.principal, params.pcr0, params.pcr8) == (ROLE_ARN, PCR0, None)
    assert params.account_root == ROOT_ARN and not params.migration


@pytest.mark.parametrize(
    ("principal", "action", "pcr0", "allowed"),
    [
        (ROLE_ARN, "kms:Decrypt", PCR0, True),
        (ROLE_ARN, "kms:GenerateDataKey", PCR0.upper(), True),
        (ROLE_ARN, "kms:Decrypt", None, False),
        (ROLE_ARN, "kms:Decrypt", "00" * 48, False),
        (ROLE_ARN, "kms:Encrypt", PCR0, False),
        (ROLE_ARN, "kms:PutKeyPolicy", PCR0, False),
        (ROOT_ARN, "kms:Decrypt", PCR0, False),
        (ROOT_ARN, "kms:GenerateDataKey", PCR0, False),
        (ROOT_ARN, "kms:ReEncryptFrom", None, False),
        (ROOT_ARN, "kms:CreateGrant", None, False),
        (ROOT_ARN, "kms:PutKeyPolicy", None, False),
        (ROOT_ARN, "kms:Encrypt", None, False),
        (f"arn:aws:iam::{ACCOUNT}:user/admin", "kms:Decrypt", PCR0, False),
        (f"arn:aws:iam::{ACCOUNT}:user/admin", "kms:EnableKeyRotation", None, True),
        (ROOT_ARN, "kms:CancelKeyDeletion", None, True),
    ],
)
def test_who_may_do_what_with_the_key(
    single: Synthesized, principal: str, action: str, pcr0: str | None, allowed: bool
) -> None:
    _, key = single.one("AWS::KMS::Key")
    policy = _concrete(key["Properties"]["KeyPolicy"], _role_id(single))
    context = RequestContext(pcrs=None if pcr0 is None else {0: bytes.fromhex(pcr0)})
    decision = evaluate(policy, action=action, principal=principal, context=context)
    assert decision.allowed is allowed, decision.reason


def test_the_key_rotates_is_retained_and_skips_the_lockout_check(single: Synthesized) -> None:
    _, key = single.one("AWS::KMS::Key")
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["Properties"]["BypassPolicyLockoutSafetyCheck"] is True
    assert key["DeletionPolicy"] == key["UpdateReplacePolicy"] == "Retain"
    assert single.template["Outputs"]["LockedPCR0"]["Value"] == PCR0


def test_the_kms_key_id_parameter_names_the_key(single: Synthesized) -> None:
    key_id, _ = single.one("AWS::KMS::Key")
    _, parameter = single.one("AWS::SSM::Parameter")
    assert parameter["Properties"]["Name"] == "/dev/hello/KMSKeyID"
    assert parameter["Properties"]["Value"] == {"Ref": key_id}
    assert parameter["Properties"]["Type"] == "String"


def test_a_pcr0_is_96_hex_digits_lower_cased() -> None:
    assert normalize_pcr0(" " + PCR0.upper() + "\n") == PCR0
    for bad in ("", "ab" * 47, "zz" * 48, "ab" * 49):
        with pytest.raises(ConfigError, match="PCR0 must be 96 hex digits"):
            normalize_pcr0(bad)
