"""A stack stuck after a failed create: named with its way out, deleted only when asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enclave_core.deploy.deployer import deploy
from enclave_core.deploy.stack_state import StuckStack, kind_of, stuck_message
from tests.doubles.host_tools import cdk_calls
from tests.doubles.stubbed_aws import (
    INSTANCE,
    STACK,
    FakeClock,
    FakeSynth,
    StubbedAws,
    deploy_config,
    health,
)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("CREATE_COMPLETE", "ready"),
        ("UPDATE_COMPLETE", "ready"),
        ("UPDATE_ROLLBACK_COMPLETE", "ready"),
        ("UPDATE_IN_PROGRESS", "busy"),
        ("CREATE_IN_PROGRESS", "busy"),
        ("DELETE_IN_PROGRESS", "busy"),
        ("REVIEW_IN_PROGRESS", "failed_create"),
        ("ROLLBACK_COMPLETE", "failed_create"),
        ("ROLLBACK_FAILED", "failed_create"),
        ("CREATE_FAILED", "failed_create"),
        ("DELETE_FAILED", "failed_create"),
        ("UPDATE_ROLLBACK_FAILED", "rollback_failed"),
    ],
)
def test_every_status_has_a_kind(status: str, kind: str) -> None:
    assert kind_of(status) == kind


def test_each_stuck_state_names_its_way_out() -> None:
    rolled = stuck_message(STACK, "ROLLBACK_COMPLETE", "The following resource(s) failed: [Key]")
    assert rolled == (
        f"stack {STACK} is stuck in ROLLBACK_COMPLETE (a first create that failed: The following "
        "resource(s) failed: [Key]): it cannot be updated, only deleted. Run enclave deploy "
        "--delete-failed-stack to delete it and deploy afresh (its retained buckets are "
        f"adopted), or aws cloudformation delete-stack --stack-name {STACK}"
    )
    review = stuck_message(STACK, "REVIEW_IN_PROGRESS")
    assert "made for a change set that was never executed" in review
    assert "--delete-failed-stack" in review
    rollback = stuck_message(STACK, "UPDATE_ROLLBACK_FAILED")
    assert f"continue-update-rollback --stack-name {STACK}" in rollback
    assert "--delete-failed-stack" not in rollback  # a working deployment: never deleted


def test_a_failed_create_is_refused_with_its_way_out_and_nothing_is_touched(
    tmp_path: Path, fake_cdk: Path
) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.stack(status="ROLLBACK_COMPLETE", reason="Resource creation cancelled")
    asked: list[StuckStack] = []
    with pytest.raises(StuckStack) as caught:
        deploy(
            config,
            aws.deps(FakeClock(), FakeSynth()),
            delete_failed=lambda stuck: asked.append(stuck) is not None,  # the user says no
        )
    aws.assert_done()
    assert [s.status for s in asked] == ["ROLLBACK_COMPLETE"]
    assert str(caught.value).startswith(
        f"stack {STACK} is stuck in ROLLBACK_COMPLETE (a first create that failed: Resource "
        "creation cancelled): it cannot be updated"
    )
    assert cdk_calls(fake_cdk) == []


def test_a_failed_create_is_deleted_when_asked_then_deployed_afresh(
    tmp_path: Path, fake_cdk: Path, s3: Any
) -> None:
    config = deploy_config(tmp_path / "app")
    aws, clock = StubbedAws(s3), FakeClock()
    aws.caller()
    aws.stack(status="REVIEW_IN_PROGRESS")
    aws.stubs["cloudformation"].add_response("delete_stack", {}, {"StackName": STACK})
    aws.stack(status="DELETE_IN_PROGRESS")
    aws.first_deploy()  # the poll sees it gone; then the first deploy's own checks
    aws.instances({"InstanceIds": [INSTANCE]}, [{"id": INSTANCE}])
    aws.run([INSTANCE], stdout="enclave starting (HTTP 202)\n")
    aws.run([INSTANCE], stdout=health(), command_id="cmd-2")
    aws.instances({"InstanceIds": [INSTANCE]}, [{"id": INSTANCE}])
    synth = FakeSynth()
    deploy(config, aws.deps(clock, synth), delete_failed=lambda stuck: True)
    aws.assert_done()
    assert f"    deleting stack {STACK} (REVIEW_IN_PROGRESS): it holds no working deployment" in (
        aws.lines
    )
    assert clock.slept[0] == 10.0  # polled until gone
    assert [call[0] for call in cdk_calls(fake_cdk)] == ["deploy"]
    assert any(line.startswith("[3/6] cdk deploy: creating stack") for line in aws.lines)


def test_an_update_whose_rollback_failed_is_never_deleted(tmp_path: Path, fake_cdk: Path) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.stack(status="UPDATE_ROLLBACK_FAILED")
    with pytest.raises(StuckStack, match="continue-update-rollback"):
        deploy(config, aws.deps(FakeClock(), FakeSynth()), delete_failed=lambda stuck: True)
    aws.assert_done()  # no DeleteStack was sent
    assert cdk_calls(fake_cdk) == []
