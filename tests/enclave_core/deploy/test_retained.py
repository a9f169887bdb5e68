"""After `enclave destroy`, the next deploy adopts the retained buckets, role and key, checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from enclave_infra.naming import Adopted

from enclave_core.deploy.deployer import deploy
from enclave_core.errors import EnclaveError
from tests.doubles.host_tools import cdk_calls
from tests.doubles.stubbed_aws import (
    ACCOUNT,
    EIF_BUCKET,
    INSTANCE,
    OTHER_PCR0,
    OUTPUTS,
    PCR0,
    FakeClock,
    FakeSynth,
    StubbedAws,
    deploy_config,
    health,
)
from tests.enclave_core.deploy.conftest import make_logs_bucket

KEY = "retained-key-0001"
ROLE = OUTPUTS["EC2InstanceRoleARN"]
STORAGE = OUTPUTS["StorageBucketName"]
RECORD = {
    "storage_bucket": STORAGE,
    "eif_bucket": EIF_BUCKET,
    "role_arn": ROLE,
    "key_id": KEY,
    "key_pcr0": PCR0,
}
AFRESH = "aws ssm delete-parameter --name /dev/hello/Retained"


def role_exists(aws: StubbedAws) -> None:
    role = {
        "Path": "/",
        "RoleName": "devNitrohello-Role",
        "RoleId": "AROAEXAMPLEEXAMPLE1",
        "Arn": ROLE,
        "CreateDate": "2030-01-01T00:00:00Z",
    }
    aws.stubs["iam"].add_response("get_role", {"Role": role}, {"RoleName": "devNitrohello-Role"})


def key_described(aws: StubbedAws, state: str = "Enabled", origin: str = "AWS_KMS") -> None:
    meta = {
        "KeyId": KEY,
        "Arn": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{KEY}",
        "KeyState": state,
        "Origin": origin,
        "KeyManager": "CUSTOMER",
    }
    aws.stubs["kms"].add_response("describe_key", {"KeyMetadata": meta}, {"KeyId": KEY})


def a_checked_record(aws: StubbedAws) -> None:
    """Step 1 of a deploy after destroy: no stack, the record, and AWS confirming each part."""
    aws.caller()
    aws.no_stack()
    aws.record(RECORD)
    role_exists(aws)
    key_described(aws)
    aws.key_policy(KEY)


def then_deployed(aws: StubbedAws) -> None:
    """The rest of a first deploy after step 1."""
    aws.instances({"InstanceIds": [INSTANCE]}, [{"id": INSTANCE}])
    aws.run([INSTANCE], stdout="enclave starting (HTTP 202)\n")
    aws.run([INSTANCE], stdout=health(), command_id="cmd-2")
    aws.instances({"InstanceIds": [INSTANCE]}, [{"id": INSTANCE}])


def test_the_recorded_role_key_and_buckets_are_checked_and_adopted(
    tmp_path: Path, fake_cdk: Path, s3: Any
) -> None:
    config = deploy_config(tmp_path / "app")
    s3.create_bucket(Bucket=STORAGE)  # retained, with the first deployment's objects
    make_logs_bucket(s3)  # the new stack's
    aws, synth = StubbedAws(s3), FakeSynth()
    a_checked_record(aws)
    then_deployed(aws)
    deploy(config, aws.deps(FakeClock(), synth))
    aws.assert_done()
    assert synth.adopted == [Adopted(**RECORD)]
    assert (
        f"    adopting what the destroyed deployment left: role {ROLE}, key {KEY}, bucket "
        f"{STORAGE}, bucket {EIF_BUCKET}"
    ) in aws.lines
    # CloudFormation cannot set an adopted bucket's logging: step 4 points it at the new stack's.
    for bucket, prefix in ((STORAGE, "storage/"), (EIF_BUCKET, "eif/")):
        logging = s3.get_bucket_logging(Bucket=bucket)["LoggingEnabled"]
        assert logging == {"TargetBucket": OUTPUTS["LogsBucketName"], "TargetPrefix": prefix}


def test_a_bucket_deleted_since_is_made_afresh(tmp_path: Path, fake_cdk: Path, s3: Any) -> None:
    config = deploy_config(tmp_path / "app")  # the storage bucket is gone from moto's S3
    make_logs_bucket(s3)
    aws, synth = StubbedAws(s3), FakeSynth()
    a_checked_record(aws)
    then_deployed(aws)
    deploy(config, aws.deps(FakeClock(), synth))
    assert synth.adopted == [Adopted(eif_bucket=EIF_BUCKET, role_arn=ROLE, key_id=KEY,
                                     key_pcr0=PCR0)]  # fmt: skip


def test_a_new_image_cannot_adopt_a_key_locked_to_the_old_one(
    tmp_path: Path, fake_cdk: Path
) -> None:
    config = deploy_config(tmp_path / "app", pcr0=OTHER_PCR0)
    aws = StubbedAws()
    a_checked_record(aws)
    with pytest.raises(EnclaveError) as caught:
        deploy(config, aws.deps(FakeClock(), FakeSynth()))
    assert str(caught.value).startswith(
        f"the retained key {KEY} of the destroyed deployment is locked to PCR0 {PCR0[:16]}…, and "
        f"this EIF measures {OTHER_PCR0[:16]}…: deploy the image with that PCR0 to get the data "
        "back (then enclave migrate to the new one)."
    )
    assert AFRESH in str(caught.value)
    assert cdk_calls(fake_cdk) == []


@pytest.mark.parametrize("broken", ["role gone", "key pending deletion", "foreign policy"])
def test_a_record_that_does_not_check_out_is_refused_with_the_way_out(
    tmp_path: Path, fake_cdk: Path, broken: str
) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.no_stack()
    aws.record(RECORD)
    if broken == "role gone":
        aws.stubs["iam"].add_client_error(
            "get_role", service_error_code="NoSuchEntity", http_status_code=404
        )
        expected = f"the role {ROLE} no longer exists (the retained key trusts that role only)"
    elif broken == "key pending deletion":
        role_exists(aws)
        key_described(aws, state="PendingDeletion")
        expected = f"the key {KEY} is PendingDeletion"
    else:
        role_exists(aws)
        key_described(aws)
        aws.key_policy(KEY, role="arn:aws:iam::123456789012:role/host-made")
        expected = "names arn:aws:iam::123456789012:role/host-made"
    with pytest.raises(EnclaveError) as caught:
        deploy(config, aws.deps(FakeClock(), FakeSynth()))
    aws.assert_done()
    message = str(caught.value)
    assert message.startswith("enclave destroy left /dev/hello/Retained, but ")
    assert expected in message and AFRESH in message
    assert cdk_calls(fake_cdk) == []


def test_a_malformed_record_is_refused(tmp_path: Path, fake_cdk: Path) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.no_stack()
    aws.record({**RECORD, "key_id": ""})
    with pytest.raises(EnclaveError, match="is malformed: every field must be a non-empty"):
        deploy(config, aws.deps(FakeClock(), FakeSynth()))


def test_without_a_record_the_accounts_buckets_of_the_same_names_are_adopted(
    tmp_path: Path, fake_cdk: Path, s3: Any
) -> None:
    config = deploy_config(tmp_path / "app")
    s3.create_bucket(Bucket=STORAGE)  # left by a first create that failed
    make_logs_bucket(s3)
    aws, synth = StubbedAws(s3), FakeSynth()
    aws.caller()
    aws.no_stack()
    aws.no_record()
    then_deployed(aws)
    deploy(config, aws.deps(FakeClock(), synth))
    assert synth.adopted == [Adopted(storage_bucket=STORAGE)]
    assert any(line.startswith(f"    adopting bucket {STORAGE}") for line in aws.lines)


def test_a_bucket_name_another_account_owns_is_refused(tmp_path: Path, fake_cdk: Path) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.no_stack()
    aws.no_record()
    aws.stubs["s3"].add_client_error(
        "head_bucket",
        service_error_code="403",
        http_status_code=403,
        expected_params={"Bucket": STORAGE, "ExpectedBucketOwner": ACCOUNT},
    )
    with pytest.raises(EnclaveError) as caught:
        deploy(config, aws.deps(FakeClock(), FakeSynth()))
    assert str(caught.value) == (
        f"the bucket name {STORAGE} is taken by another AWS account (or these credentials may "
        "not read it): choose another prefix or name in enclave.yaml (bucket names are global)"
    )


def test_an_update_keeps_adopting_what_the_stack_adopted(
    tmp_path: Path, fake_cdk: Path, s3: Any
) -> None:
    config = deploy_config(tmp_path / "app")
    s3.create_bucket(Bucket=STORAGE)
    make_logs_bucket(s3)
    aws, synth = StubbedAws(s3), FakeSynth()
    aws.caller()
    aws.stack(outputs={**OUTPUTS, "AdoptedResources": Adopted(**RECORD).to_json()})
    then_deployed(aws)
    deploy(config, aws.deps(FakeClock(), synth))
    assert synth.adopted == [Adopted(**RECORD)]
