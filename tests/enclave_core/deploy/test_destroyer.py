"""`enclave destroy`: the plan read from AWS (what is lost, what remains), then the four steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave_core.deploy.destroyer import destroy, plan_destroy
from enclave_core.errors import EnclaveError
from tests.doubles.stubbed_aws import (
    INSTANCE,
    OTHER_PCR0,
    OUTPUTS,
    PCR0,
    STACK,
    FakeClock,
    FakeSynth,
    StubbedAws,
    deploy_config,
)

KEY = OUTPUTS["KMSKeyID"]
STORAGE = OUTPUTS["StorageBucketName"]
EIF = OUTPUTS["EifBucketName"]
TEMPLATE = {
    "Resources": {
        "Key": {
            "Type": "AWS::KMS::Key",
            "DeletionPolicy": "Delete",
            "Properties": {"PendingWindowInDays": 7},
        },
        "Storage": {"Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain"},
        "Eif": {"Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain"},
        "KeyParameter": {"Type": "AWS::SSM::Parameter"},
        "Host": {"Type": "AWS::EC2::Instance"},
        "HostRole": {"Type": "AWS::IAM::Role", "DeletionPolicy": "RetainExceptOnCreate"},
    }
}
ROLE = OUTPUTS["EC2InstanceRoleARN"]
RESOURCES = [
    ("Key", "AWS::KMS::Key", KEY),
    ("Storage", "AWS::S3::Bucket", STORAGE),
    ("Eif", "AWS::S3::Bucket", EIF),
    ("KeyParameter", "AWS::SSM::Parameter", "/dev/hello/KMSKeyID"),
    ("Host", "AWS::EC2::Instance", INSTANCE),
    ("HostRole", "AWS::IAM::Role", "devNitrohello-Role"),
]


def queue_plan(aws: StubbedAws, parameters: dict[str, str]) -> None:
    """The reads plan_destroy makes, in each client's order."""
    aws.caller()
    aws.stack()
    aws.instances({"InstanceIds": [INSTANCE]}, [{"id": INSTANCE}])
    summaries = [
        {
            "LogicalResourceId": logical,
            "PhysicalResourceId": physical,
            "ResourceType": kind,
            "LastUpdatedTimestamp": "2030-01-01T00:00:00Z",
            "ResourceStatus": "CREATE_COMPLETE",
        }
        for logical, kind, physical in RESOURCES
    ]
    aws.stubs["cloudformation"].add_response(
        "list_stack_resources", {"StackResourceSummaries": summaries}, {"StackName": STACK}
    )
    aws.stubs["cloudformation"].add_response(
        "get_template", {"TemplateBody": json.dumps(TEMPLATE)}, {"StackName": STACK}
    )
    found = [{"Name": name, "Type": "String", "Value": value} for name, value in parameters.items()]
    aws.stubs["ssm"].add_response(
        "get_parameters_by_path",
        {"Parameters": found},
        {"Path": "/dev/hello", "Recursive": True},
    )


def test_the_plan_says_exactly_what_is_lost_and_what_remains(tmp_path: Path) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    queue_plan(
        aws,
        {
            "/dev/hello/KMSKeyID": "migrated-key-0001",
            "/dev/hello/signing_key/Ciphertext": "AQICAH...",
            "/dev/hello/StorageDEK/Ciphertext": "AQICAH...",
        },
    )
    plan = plan_destroy(config, aws.deps(FakeClock(), FakeSynth()))
    aws.assert_done()
    assert (plan.stack, plan.exists, plan.instance_ids) == (STACK, True, [INSTANCE])
    assert plan.lost == [
        f"instance(s) {INSTANCE}, with the enclave and its memory",
        f"KMS key {KEY}: scheduled for deletion, gone for good after 7 days; from then on "
        "nobody can decrypt the secrets and the stored data it protects",
        "the network, the instance profile and the parameters the stack itself created",
    ]
    assert plan.remains == [
        f"S3 bucket {STORAGE} (retained, with its objects; remove it with aws s3 rb "
        f"s3://{STORAGE} --force)",
        f"S3 bucket {EIF} (retained, with its objects; remove it with aws s3 rb s3://{EIF} "
        "--force)",
        "IAM role devNitrohello-Role (retained: the key's policy names this role, and a role "
        "made anew would be another principal)",
        "2 SSM parameter(s) the enclave wrote under /dev/hello/, not part of the stack: "
        "/dev/hello/StorageDEK/Ciphertext, /dev/hello/signing_key/Ciphertext",
        "KMS key migrated-key-0001 (made by enclave migrate, not part of the stack), still "
        "enabled: aws kms schedule-key-deletion --key-id migrated-key-0001 "
        "--pending-window-in-days 7",
        "the record /dev/hello/Retained of the retained buckets, role and key: the next enclave "
        "deploy of this stack adopts them, and the data is readable again",
    ]
    assert plan.key_in_use == "migrated-key-0001"


def test_a_missing_stack_has_nothing_to_destroy(tmp_path: Path) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.no_stack()
    plan = plan_destroy(config, aws.deps(FakeClock(), FakeSynth()))
    assert (plan.exists, plan.lost, plan.remains) == (False, [], [])


def test_destroy_stops_the_enclave_then_runs_cdk_destroy(tmp_path: Path, fake_cdk: Path) -> None:
    config = deploy_config(tmp_path / "app")
    for name in ("cdk-outputs.json", "deploy.json"):
        (config.state_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (config.state_dir / name).write_text("{}")
    aws, synth = StubbedAws(), FakeSynth()
    queue_plan(aws, {"/dev/hello/KMSKeyID": KEY})
    deps = aws.deps(FakeClock(), synth)
    plan = plan_destroy(config, deps)
    assert not any("made by enclave migrate" in line for line in plan.remains)  # the stack's
    assert plan.key_in_use is None
    aws.key_policy(KEY)
    aws.put_record()
    aws.run([INSTANCE], stdout="enclave stopped\n")
    destroy(config, deps, plan)
    aws.assert_done()
    recorded = json.loads(aws.put[0]["Value"])
    assert aws.put[0]["Name"] == "/dev/hello/Retained"
    assert (recorded["stack"], recorded["resources"]) == (
        STACK,
        {
            "eif_bucket": EIF,
            "key_id": KEY,
            "key_pcr0": PCR0,
            "role_arn": ROLE,
            "storage_bucket": STORAGE,
        },
    )
    assert "/v1/stop" in "\n".join(aws.sent[0]["Parameters"]["commands"])
    assert synth.calls == [(config.state_dir / "cdk.out", PCR0)]
    calls = json.loads(fake_cdk.read_text())["calls"]
    assert [c["argv"] for c in calls] == [
        ["destroy", "--app", str(config.state_dir / "cdk.out"), "--force", STACK]
    ]
    assert calls[0]["AWS_REGION"] == "us-east-1"
    assert [line for line in aws.lines if line.startswith("[")] == [
        "[1/4] recording the retained buckets, role and key in /dev/hello/Retained",
        f"[2/4] stopping the enclave on {INSTANCE}",
        f"[3/4] synthesizing stack {STACK} (cdk destroy needs the app)",
        f"[4/4] cdk destroy: deleting stack {STACK} (several minutes)",
    ]
    assert f"    {INSTANCE}: enclave stopped" in aws.lines
    assert not (config.state_dir / "deploy.json").exists()
    assert not (config.state_dir / "cdk-outputs.json").exists()


def test_an_enclave_that_cannot_be_stopped_does_not_block_destroy(
    tmp_path: Path, fake_cdk: Path
) -> None:
    config = deploy_config(tmp_path / "app", pcr0=None)  # no pcr.json: a placeholder PCR0
    aws, synth = StubbedAws(), FakeSynth()
    queue_plan(aws, {})
    deps = aws.deps(FakeClock(), synth)
    plan = plan_destroy(config, deps)
    aws.key_policy(KEY)
    aws.put_record()
    aws.stubs["ssm"].add_client_error(
        "send_command", service_error_code="InvalidDocument", service_message="nope"
    )
    destroy(config, deps, plan)
    assert any(line.startswith("    warning: could not stop the enclave") for line in aws.lines)
    assert synth.calls[0][1] == "0" * 96
    assert len(json.loads(fake_cdk.read_text())["calls"]) == 1


def test_without_the_cdk_cli_nothing_is_stopped(tmp_path: Path) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    queue_plan(aws, {})
    deps = aws.deps(FakeClock(), FakeSynth(), which=lambda name: None)
    plan = plan_destroy(config, deps)
    with pytest.raises(EnclaveError, match="enclave destroy needs the AWS CDK CLI"):
        destroy(config, deps, plan)
    assert aws.sent == []  # the enclave still runs


def test_a_migrated_key_is_the_one_recorded_and_a_foreign_policy_is_only_a_warning(
    tmp_path: Path, fake_cdk: Path
) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    queue_plan(aws, {"/dev/hello/KMSKeyID": "migrated-key-0001"})
    deps = aws.deps(FakeClock(), FakeSynth())
    plan = plan_destroy(config, deps)
    # The migrated key is locked to the image it was made for: that PCR0 is recorded.
    aws.key_policy("migrated-key-0001", pcr0=OTHER_PCR0)
    aws.put_record()
    aws.run([INSTANCE], stdout="enclave stopped\n")
    destroy(config, deps, plan)
    resources = json.loads(aws.put[0]["Value"])["resources"]
    assert (resources["key_id"], resources["key_pcr0"]) == ("migrated-key-0001", OTHER_PCR0)

    # A key whose policy is not the enclave's is not recorded; destroy goes on and says so.
    aws2 = StubbedAws()
    queue_plan(aws2, {"/dev/hello/KMSKeyID": KEY})
    deps2 = aws2.deps(FakeClock(), FakeSynth())
    plan2 = plan_destroy(config, deps2)
    aws2.key_policy(KEY, role="arn:aws:iam::123456789012:role/someone-else")
    aws2.run([INSTANCE], stdout="enclave stopped\n")
    destroy(config, deps2, plan2)
    aws2.assert_done()
    assert aws2.put == []
    warning = next(line for line in aws2.lines if "could not record" in line)
    assert "names arn:aws:iam::123456789012:role/someone-else" in warning
    assert "the data will stay unreadable" in warning
