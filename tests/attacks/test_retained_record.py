"""P6 of docs/threat-model.md: the record `enclave destroy` leaves is host-writable, and the next
`enclave deploy` adopts only what the destroyed stack made, checked against AWS.

The host (root on the instance, with the instance role) writes ``/{prefix}/{name}/Retained``
between a destroy and the operator's next deploy, as the role allows (``ssm:PutParameter`` on the
app's path). Each forgery below would hand the host something if deploy adopted it as recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave_core.config import Config
from enclave_core.deploy.deployer import deploy
from enclave_core.errors import EnclaveError
from tests.doubles.stubbed_aws import (
    ACCOUNT,
    EIF_BUCKET,
    OUTPUTS,
    PCR0,
    FakeClock,
    FakeSynth,
    StubbedAws,
    deploy_config,
)

ADMIN_ROLE = f"arn:aws:iam::{ACCOUNT}:role/OrganizationAccountAccessRole"
HONEST = {
    "storage_bucket": OUTPUTS["StorageBucketName"],
    "eif_bucket": EIF_BUCKET,
    "role_arn": OUTPUTS["EC2InstanceRoleARN"],
    "key_id": "host-made-key",
    "key_pcr0": PCR0,
}


def operator_deploys(aws: StubbedAws, config: Config) -> EnclaveError:
    """The operator's ``enclave deploy``; its refusal (nothing synthesized, nothing created)."""
    synth = FakeSynth()
    # The cdk CLI is never run in step 1: only looked up.
    deps = aws.deps(FakeClock(), synth, which=lambda name: f"/usr/bin/{name}")
    with pytest.raises(EnclaveError) as caught:
        deploy(config, deps)
    aws.assert_done()
    assert synth.calls == []
    return caught.value


def forged_deploy(tmp_path: Path, record: dict[str, str]) -> EnclaveError:
    """Deploy after the host wrote ``record``; refused before any role, key or bucket is
    looked up (the stubs hold no answer for those calls)."""
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.no_stack()
    aws.record(record)
    return operator_deploys(aws, config)


def test_a_record_naming_an_administrators_role_is_refused(tmp_path: Path) -> None:
    # With kms:CreateKey the host can make a key whose canonical policy names any role and the
    # right PCR0; adopting that role would put it in the new hosts' instance profile.
    refused = forged_deploy(tmp_path, {**HONEST, "role_arn": ADMIN_ROLE})
    assert f"its role {ADMIN_ROLE} is not one stack devNitrohello made" in str(refused)


@pytest.mark.parametrize("field", ["storage_bucket", "eif_bucket"])
def test_a_record_naming_another_bucket_of_the_account_is_refused(
    tmp_path: Path, field: str
) -> None:
    # Adopting it would grant the hosts' role its objects (storage) or feed the hosts its wheels.
    refused = forged_deploy(tmp_path, {**HONEST, field: "payroll-exports-123456789012"})
    assert "its bucket payroll-exports-123456789012 is not one stack devNitrohello made" in str(
        refused
    )


def test_a_record_naming_a_key_the_host_can_decrypt_with_is_refused(tmp_path: Path) -> None:
    # The stack's own role and buckets, but a key the host made with a policy of its choosing.
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.no_stack()
    aws.record(HONEST)
    role = {"Path": "/", "RoleName": "devNitrohello-Role", "RoleId": "AROAEXAMPLEEXAMPLE1",
            "Arn": HONEST["role_arn"], "CreateDate": "2030-01-01T00:00:00Z"}  # fmt: skip
    aws.stubs["iam"].add_response("get_role", {"Role": role}, {"RoleName": "devNitrohello-Role"})
    meta = {"KeyId": "host-made-key", "Arn": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/host-made-key",
            "KeyState": "Enabled", "Origin": "AWS_KMS", "KeyManager": "CUSTOMER"}  # fmt: skip
    aws.stubs["kms"].add_response("describe_key", {"KeyMetadata": meta}, {"KeyId": "host-made-key"})
    backdoor = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "HostDecrypts",
                "Effect": "Allow",
                "Principal": {"AWS": HONEST["role_arn"]},
                "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
                "Resource": "*",
            }
        ],
    }
    aws.stubs["kms"].add_response(
        "get_key_policy",
        {"Policy": json.dumps(backdoor), "PolicyName": "default"},
        {"KeyId": "host-made-key", "PolicyName": "default"},
    )
    refused = operator_deploys(aws, config)
    assert "KMS key host-made-key does not have the enclave's policy" in str(refused)
