"""`enclave deploy`, `enclave destroy` and `enclave status --cloud` as a user runs them.

AWS is botocore's Stubber (S3 is moto), the cdk CLI is the fake on PATH, the CDK app a fake
``synthesize``: all injected through ``enclave_core.cli.deploy.deps_factory``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from enclave_core.config import Config
from tests.doubles.host_tools import cdk_calls
from tests.doubles.stubbed_aws import (
    ACCOUNT,
    EIF_BUCKET,
    INSTANCE,
    OUTPUTS,
    PCR0,
    STACK,
    FakeClock,
    FakeSynth,
    StubbedAws,
    deploy_config,
    health,
)
from tests.helpers import cli

SINGLE = {"InstanceIds": [INSTANCE]}


def inject(monkeypatch: pytest.MonkeyPatch, aws: StubbedAws, synth: FakeSynth) -> None:
    clock = FakeClock()
    monkeypatch.setattr(
        "enclave_core.cli.deploy.deps_factory",
        lambda config, **outputs: aws.deps(clock, synth, **outputs),
    )


@pytest.fixture
def production_config(tmp_path: Path) -> Config:
    return deploy_config(tmp_path / "app")


def test_deploy_prints_six_steps_and_where_the_app_answers(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_cdk: Path,
    production_config: Config,
    moto_reset: str,
    boto3_session: boto3.session.Session,
) -> None:
    s3 = boto3_session.client("s3", endpoint_url=moto_reset)
    s3.create_bucket(Bucket=EIF_BUCKET)
    aws = StubbedAws(s3)
    aws.caller()
    aws.first_deploy()
    aws.instances(SINGLE, [{"id": INSTANCE}])
    aws.run([INSTANCE], stdout="enclave starting (HTTP 202)\n")
    aws.run([INSTANCE], stdout=health(), command_id="cmd-2")
    aws.instances(SINGLE, [{"id": INSTANCE}])
    inject(monkeypatch, aws, FakeSynth())
    code, out, err = cli(capsys, "deploy", "--yes", "-c", str(production_config.path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line[:5] for line in lines if line.startswith("[")] == [f"[{k}/6]" for k in range(1, 7)]
    assert lines[-7:] == [
        f"deployed stack {STACK} (PCR0 {PCR0[:16]}…)",
        f"  {INSTANCE}: running, 10.0.1.23, enclave running",
        "  endpoint: https://10.0.1.23:443",
        f"  KMSKeyID: {OUTPUTS['KMSKeyID']}",
        f"  StorageBucketName: {OUTPUTS['StorageBucketName']}",
        f"  EifBucketName: {EIF_BUCKET}",
        f"  EC2InstanceRoleARN: {OUTPUTS['EC2InstanceRoleARN']}",
    ]
    assert f"    {INSTANCE}: enclave starting (HTTP 202)" in lines


def test_deploy_asks_before_creating_anything_and_no_means_nothing(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_cdk: Path,
    production_config: Config,
) -> None:
    aws, synth = StubbedAws(), FakeSynth()
    aws.caller()
    aws.first_deploy()
    inject(monkeypatch, aws, synth)
    code, out, err = cli(capsys, "deploy", "-c", str(production_config.path), stdin="n\n")
    assert code == 1
    assert err == "ERROR: deploy cancelled: nothing was created or changed\n"
    assert (
        f"enclave deploy will create stack {STACK} in account {ACCOUNT}, us-east-1: 1 x "
        "m6i.xlarge (enclave: 2 vCPUs, 4096 MiB), a KMS key, S3 buckets and VPC endpoints, "
        "billed by AWS for as long as they exist (enclave destroy removes them)."
    ) in out
    assert out.endswith("Continue? [y/N] ")
    assert (synth.calls, cdk_calls(fake_cdk)) == ([], [])


def test_deploy_lists_every_problem_of_the_file_in_one_error(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_cdk: Path,
    tmp_path: Path,
) -> None:
    config = deploy_config(
        tmp_path / "bad",
        instance_type="t3.large",
        storage={"backend": "s3", "options": {"bukcet": "x"}},
    )
    inject(monkeypatch, StubbedAws(), FakeSynth())
    code, out, err = cli(capsys, "deploy", "--yes", "-c", str(config.path))
    assert code == 1
    errors = err.splitlines()
    assert errors[0] == "ERROR: enclave deploy cannot start:"
    assert "  storage.options.bukcet: Unknown field." in errors
    assert "  storage.options.bucket: Missing data for required field." in errors
    assert errors[-1].startswith("  instance_type t3.large is not a Nitro Enclaves instance type")
    assert out == "[1/6] checking enclave.yaml, sizing, the EIF, the tools and the AWS account\n"


def queue_destroy_plan(aws: StubbedAws) -> None:
    aws.caller()
    aws.stack()
    aws.instances(SINGLE, [{"id": INSTANCE}])
    aws.stubs["cloudformation"].add_response(
        "list_stack_resources", {"StackResourceSummaries": []}, {"StackName": STACK}
    )
    template = {
        "Resources": {
            "Key": {"Type": "AWS::KMS::Key"},
            "Storage": {"Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain"},
        }
    }
    aws.stubs["cloudformation"].add_response(
        "get_template", {"TemplateBody": json.dumps(template)}, {"StackName": STACK}
    )
    aws.stubs["ssm"].add_response(
        "get_parameters_by_path", {"Parameters": []}, {"Path": "/dev/hello", "Recursive": True}
    )


def queue_destroy(aws: StubbedAws) -> None:
    """The plan's reads, then the record of what stays (the key's policy read, the record put)."""
    queue_destroy_plan(aws)
    aws.key_policy()
    aws.put_record()


def test_destroy_warns_asks_for_the_stack_name_and_destroys(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_cdk: Path,
    production_config: Config,
) -> None:
    aws = StubbedAws()
    queue_destroy(aws)
    aws.run([INSTANCE], stdout="enclave stopped\n")
    inject(monkeypatch, aws, FakeSynth())
    code, out, err = cli(capsys, "destroy", "-c", str(production_config.path), stdin=STACK)
    assert (code, err) == (0, "")
    aws.assert_done()
    assert out.startswith(
        f"WARNING: enclave destroy deletes stack {STACK} (account {ACCOUNT}, us-east-1). Lost "
        f"for good:\n  - instance(s) {INSTANCE}, with the enclave and its memory\n  - KMS key Key: "
        "scheduled for deletion, gone for good after 30 days; from then on nobody can decrypt "
        "the secrets and the stored data it protects\n"
    )
    assert "What remains afterwards" in out
    assert f"Type the stack name ({STACK}) to destroy it: [1/4] recording" in out
    assert f"[2/4] stopping the enclave on {INSTANCE}" in out
    assert out.endswith(
        f"destroyed stack {STACK}\nstill there, until you delete it:\n  - S3 bucket Storage "
        "(retained, with its objects; remove it with aws s3 rb s3://Storage --force)\n"
        "  - the record /dev/hello/Retained of the retained buckets, role and key: the next "
        "enclave deploy of this stack adopts them, and the data is readable again\n"
    )
    assert cdk_calls(fake_cdk)[0][:1] == ["destroy"]


def test_destroy_with_the_wrong_name_changes_nothing(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_cdk: Path,
    production_config: Config,
) -> None:
    aws = StubbedAws()
    queue_destroy_plan(aws)
    inject(monkeypatch, aws, FakeSynth())
    code, _, err = cli(capsys, "destroy", "-c", str(production_config.path), stdin="yes\n")
    assert (code, err) == (1, "ERROR: destroy cancelled: 'yes' is not the stack name; nothing "
                                "was changed\n")  # fmt: skip
    assert (aws.sent, cdk_calls(fake_cdk)) == ([], [])


def test_destroy_force_does_not_ask_and_a_missing_stack_is_nothing_to_do(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_cdk: Path,
    production_config: Config,
) -> None:
    aws = StubbedAws()
    queue_destroy(aws)
    aws.run([INSTANCE], stdout="enclave stopped\n")
    inject(monkeypatch, aws, FakeSynth())
    code, out, _ = cli(capsys, "destroy", "--force", "-c", str(production_config.path))
    assert code == 0 and "Type the stack name" not in out
    aws.caller()
    aws.no_stack()
    code, out, _ = cli(capsys, "destroy", "--force", "-c", str(production_config.path))
    assert (code, out) == (
        0,
        f"stack {STACK} does not exist in account {ACCOUNT}, us-east-1: nothing to destroy\n",
    )


def test_status_cloud_json_is_the_stack_instances_and_health(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    production_config: Config,
) -> None:
    aws = StubbedAws()
    aws.caller()
    aws.stack()
    aws.instances(SINGLE, [{"id": INSTANCE}])
    aws.run([INSTANCE], stdout=health())
    inject(monkeypatch, aws, FakeSynth())
    code, out, err = cli(
        capsys, "status", "--cloud", "-f", "json", "-c", str(production_config.path)
    )
    assert (code, err) == (0, "")
    doc: dict[str, Any] = json.loads(out)
    assert (doc["stack"], doc["stack_status"], doc["outputs"]) == (
        STACK,
        "CREATE_COMPLETE",
        OUTPUTS,
    )
    assert doc["instances"][0]["id"] == INSTANCE
    assert doc["health"][INSTANCE]["status"] == "running"
    assert doc["endpoints"] == ["https://10.0.1.23:443"]


def test_a_failed_create_is_deleted_only_when_asked(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_cdk: Path,
    production_config: Config,
) -> None:
    aws = StubbedAws()
    aws.caller()
    aws.stack(status="ROLLBACK_COMPLETE")
    inject(monkeypatch, aws, FakeSynth())
    code, out, err = cli(capsys, "deploy", "-c", str(production_config.path), stdin="n\n")
    assert code == 1  # asked, and the answer was no
    assert f"Delete stack {STACK} now and deploy afresh? [y/N]" in out
    assert err.startswith(f"ERROR: stack {STACK} is stuck in ROLLBACK_COMPLETE")

    aws.caller()
    aws.stack(status="ROLLBACK_COMPLETE")
    code, out, err = cli(capsys, "deploy", "--yes", "-c", str(production_config.path))
    assert code == 1 and "Delete stack" not in out  # --yes alone never deletes
    assert "enclave deploy --delete-failed-stack" in err

    aws.caller()
    aws.stack(status="ROLLBACK_COMPLETE")
    aws.stubs["cloudformation"].add_response("delete_stack", {}, {"StackName": STACK})
    aws.first_deploy()  # gone at the first poll; then a first deploy's step 1 goes on
    code, out, _ = cli(
        capsys, "deploy", "--yes", "--delete-failed-stack", "-c", str(production_config.path)
    )
    assert f"    deleting stack {STACK} (ROLLBACK_COMPLETE): it holds no working deployment" in out
    assert f"[3/6] cdk deploy: creating stack {STACK}" in out  # afresh (the test stops at step 4)
