"""`enclave status --cloud`'s document: stack outputs, instance state, /health over Run Command."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave_core.deploy.stack import cloud_status, find_instances, parse_health
from enclave_core.errors import ConfigError, EnclaveError, NotFound
from tests.doubles.stubbed_aws import (
    INSTANCE,
    OUTPUTS,
    STACK,
    FakeClock,
    FakeSynth,
    StubbedAws,
    deploy_config,
    health,
)

SINGLE = {"InstanceIds": [INSTANCE]}


def test_status_shows_the_stack_its_instances_and_each_supervisors_health(
    tmp_path: Path,
) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.stack()
    aws.instances(SINGLE, [{"id": INSTANCE}])
    aws.run([INSTANCE], stdout=health("running", restarts=2))
    status = cloud_status(config, aws.deps(FakeClock(), FakeSynth()))
    aws.assert_done()
    assert status == {
        "stack": STACK,
        "stack_status": "CREATE_COMPLETE",
        "region": "us-east-1",
        "outputs": OUTPUTS,
        "instances": [
            {
                "id": INSTANCE,
                "state": "running",
                "type": "m6i.xlarge",
                "private_ip": "10.0.1.23",
                "public_ip": None,
            }
        ],
        "health": {
            INSTANCE: {"status": "running", "enclave_id": "i-1-enc1", "restarts": 2},
        },
        "endpoints": ["https://10.0.1.23:443"],
    }


def test_a_stopped_instance_is_not_asked_and_a_silent_supervisor_is_unreachable(
    tmp_path: Path,
) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.stack()
    aws.instances(SINGLE, [{"id": INSTANCE, "state": "stopped"}])
    status = cloud_status(config, aws.deps(FakeClock(), FakeSynth()))
    assert (status["instances"][0]["state"], status["health"], aws.sent) == ("stopped", {}, [])
    assert parse_health("curl: (7) Failed to connect") == {
        "status": "unreachable",
        "error": "the supervisor did not answer /health",
    }


def test_a_failed_run_command_is_reported_per_instance(tmp_path: Path) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.stack()
    aws.instances(SINGLE, [{"id": INSTANCE}])
    aws.send([INSTANCE])
    aws.invocation(INSTANCE, status="TimedOut", code=-1, stderr="")
    status = cloud_status(config, aws.deps(FakeClock(), FakeSynth()))
    assert status["health"] == {
        INSTANCE: {"status": "unreachable", "error": "SSM Run Command TimedOut: no output"}
    }


def test_no_stack_no_account_or_another_account_are_errors(tmp_path: Path) -> None:
    aws = StubbedAws()
    aws.caller()
    aws.no_stack()
    config = deploy_config(tmp_path / "app")
    with pytest.raises(NotFound, match=f"stack {STACK} does not exist .*run enclave deploy"):
        cloud_status(config, aws.deps(FakeClock(), FakeSynth()))
    aws.caller("210987654321")
    with pytest.raises(EnclaveError, match="credentials are for account 210987654321"):
        cloud_status(config, aws.deps(FakeClock(), FakeSynth()))
    without = deploy_config(tmp_path / "other", account=None)
    with pytest.raises(ConfigError, match="account is not set in enclave.yaml"):
        cloud_status(without, aws.deps(FakeClock(), FakeSynth()))


def test_without_instance_or_group_outputs_the_stack_tag_finds_the_instances() -> None:
    aws = StubbedAws()
    by_stack = {
        "Filters": [
            {"Name": "tag:aws:cloudformation:stack-name", "Values": [STACK]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    }
    aws.instances(by_stack, [{"id": "i-0b"}, {"id": "i-0a", "state": "pending"}])
    found = find_instances(aws.client("ec2"), STACK, {})
    assert [(i["id"], i["state"]) for i in found] == [("i-0a", "pending"), ("i-0b", "running")]
