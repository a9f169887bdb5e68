"""A stack that adopts what a destroyed deployment retained: the buckets, the role and the key."""

from __future__ import annotations

import pytest
from enclave_infra.naming import ADOPTED_OUTPUT, Adopted

from enclave_core.errors import ConfigError
from tests.infra.synthesis import (
    ACCOUNT,
    PCR0,
    Synthesized,
    iam_statements,
    synthesize_checked,
    text,
    write_production_config,
)

ROLE_NAME = "devNitrohello-EnclaveHostRole1A2B3C4D-AbCdEf"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}"
KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"
ADOPTED = Adopted(
    storage_bucket="hello-data-bucket",
    eif_bucket="dev-hello-eif-123456789012-eu-west-1",
    role_arn=ROLE,
    key_id=KEY,
    key_pcr0=PCR0,
)


@pytest.fixture(scope="module")
def adopted(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """The single-host stack adopting everything (cdk-nag applied)."""
    folder = tmp_path_factory.mktemp("adopted")
    config = write_production_config(folder / "app")
    return synthesize_checked(config, folder / "cdk.out", adopted=ADOPTED)


def test_nothing_retained_is_created_again(adopted: Synthesized, single: Synthesized) -> None:
    assert len(single.of_type("AWS::S3::Bucket")) == 3  # logs, storage, EIF
    assert len(adopted.of_type("AWS::S3::Bucket")) == 1  # the access-log bucket only
    assert adopted.of_type("AWS::KMS::Key") == {}
    assert adopted.of_type("AWS::IAM::Role") == {}
    _, parameter = adopted.one("AWS::SSM::Parameter")
    assert parameter["Properties"]["Value"] == KEY  # the instances read the adopted key's id


def test_the_adopted_buckets_get_their_tls_only_policy_back(adopted: Synthesized) -> None:
    policies = {
        text(p["Properties"]["Bucket"]): p["Properties"]["PolicyDocument"]["Statement"]
        for p in adopted.of_type("AWS::S3::BucketPolicy").values()
    }
    for name in ("hello-data-bucket", "dev-hello-eif-123456789012-eu-west-1"):
        (deny,) = policies[name]
        assert deny["Effect"] == "Deny" and deny["Condition"] == {
            "Bool": {"aws:SecureTransport": "false"}
        }


def test_the_adopted_role_gets_the_same_policy_and_the_instance_profile(
    adopted: Synthesized, single: Synthesized
) -> None:
    _, policy = adopted.one("AWS::IAM::Policy")
    assert policy["Properties"]["PolicyName"] == "EnclaveHost"  # replaces the role's old one
    assert text(policy["Properties"]["Roles"]) == text(
        ["devNitrohello-EnclaveHostRole1A2B3C4D-AbCdEf"]
    )
    _, profile = adopted.one("AWS::IAM::InstanceProfile")
    assert ROLE_NAME in text(profile["Properties"]["Roles"])
    sids = sorted(s.get("Sid", "") for s in iam_statements(adopted.template))
    assert sids == sorted(s.get("Sid", "") for s in iam_statements(single.template))


def test_the_outputs_name_the_adopted_resources(adopted: Synthesized) -> None:
    outputs = adopted.template["Outputs"]
    assert Adopted.from_json(outputs[ADOPTED_OUTPUT]["Value"]) == ADOPTED
    assert outputs["KMSKeyID"]["Value"] == KEY
    assert outputs["LockedPCR0"]["Value"] == PCR0
    assert outputs["EC2InstanceRoleARN"]["Value"] == ROLE


def test_the_role_stays_with_the_key_when_the_stack_is_deleted(single: Synthesized) -> None:
    _, role = single.one("AWS::IAM::Role")
    # Kept on delete (the key's policy names it), removed when a first create fails.
    assert (role["DeletionPolicy"], role["UpdateReplacePolicy"]) == (
        "RetainExceptOnCreate",
        "Retain",
    )
    assert ADOPTED_OUTPUT not in single.template["Outputs"]


def test_a_key_locked_to_another_pcr0_cannot_be_adopted(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("mismatch")
    config = write_production_config(folder / "app")
    with pytest.raises(ConfigError, match="is locked to PCR0"):
        synthesize_checked(config, folder / "cdk.out", adopted=ADOPTED, pcr0="4e" * 48)
