"""`enclave deploy`'s six steps against Stubber'd AWS, moto's S3 and the fake cdk on PATH."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from enclave_core.config import Config
from enclave_core.deploy.deployer import RUNNING_TIMEOUT_S, deploy, start_outcome
from enclave_core.deploy.external import ToolFailed
from enclave_core.deploy.ssm_run import Invocation
from enclave_core.deploy.stack import find_output, resolve_pcr0
from enclave_core.errors import ConfigError, EnclaveError, ValidationError
from tests.doubles.host_tools import cdk_calls
from tests.doubles.stubbed_aws import (
    ACCOUNT,
    EIF_BUCKET,
    EIF_BYTES,
    INSTANCE,
    OTHER_PCR0,
    OUTPUTS,
    PCR0,
    STACK,
    WHEELS,
    FakeClock,
    FakeSynth,
    StubbedAws,
    deploy_config,
    health,
)

SINGLE = {"InstanceIds": [INSTANCE]}


def happy_path(aws: StubbedAws, *, health_polls: list[str]) -> None:
    """Queue the AWS answers of a first deploy of one instance."""
    aws.caller()
    aws.first_deploy()
    aws.instances(SINGLE, [{"id": INSTANCE}])
    aws.run([INSTANCE], stdout="fetched /opt/x/image.eif\nenclave starting (HTTP 202)\n")
    for number, body in enumerate(health_polls, start=2):
        aws.run([INSTANCE], stdout=body, command_id=f"cmd-{number}")
    aws.instances(SINGLE, [{"id": INSTANCE}])


def test_a_first_deploy_runs_six_steps_and_the_enclave_runs(
    tmp_path: Path, fake_cdk: Path, s3: Any
) -> None:
    config = deploy_config(tmp_path / "app")
    aws, clock, synth = StubbedAws(s3), FakeClock(), FakeSynth()
    uploaded: list[str] = []
    s3.meta.events.register(
        "provide-client-params.s3.PutObject", lambda params, **_: uploaded.append(params["Key"])
    )
    happy_path(aws, health_polls=[health("starting"), health("running")])
    result = deploy(config, aws.deps(clock, synth))
    aws.assert_done()

    steps = [line for line in aws.lines if line.startswith("[")]
    assert [s.split("]")[0] + "]" for s in steps] == [f"[{k}/6]" for k in range(1, 7)]
    assert steps[1] == f"[2/6] synthesizing stack {STACK} (key locked to PCR0 {PCR0[:16]}…)"
    assert synth.calls == [(config.state_dir / "cdk.out", PCR0)]
    assert cdk_calls(fake_cdk) == [
        [
            "deploy",
            "--app",
            str(config.state_dir / "cdk.out"),
            "--require-approval",
            "never",
            "--outputs-file",
            str(config.state_dir / "cdk-outputs.json"),
            STACK,
        ]
    ]
    assert f"     ✅  {STACK}" in aws.lines  # the cdk CLI's own output, streamed and indented
    # Step 4: the EIF and the wheelhouse, byte for byte, where the hosts' first boot looks.
    assert s3.get_object(Bucket=EIF_BUCKET, Key="image.eif")["Body"].read() == EIF_BYTES
    # A new host starts installing once image.eif is there: it goes last, after every wheel.
    assert uploaded[-1] == "image.eif" and len(uploaded) == 1 + len(WHEELS)
    listed = s3.list_objects_v2(Bucket=EIF_BUCKET, Prefix="wheels/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(f"wheels/{w}" for w in WHEELS)
    # Step 5 fetched and started; step 6 polled /health until running.
    start, *polls = aws.sent
    script = "\n".join(start["Parameters"]["commands"])
    assert f"s3://{EIF_BUCKET}/image.eif" in script and "/v1/start" in script
    assert start["Parameters"]["executionTimeout"] == ["1500"]
    assert [p["Parameters"]["commands"] for p in polls] == [
        ["curl -s -m 10 http://127.0.0.1:8443/health || true"]
    ] * 2
    assert clock.slept == [10.0]  # one wait between the two /health polls
    assert result.endpoints == ["https://10.0.1.23:443"]
    assert result.health[INSTANCE]["status"] == "running"
    record = json.loads((config.state_dir / "deploy.json").read_text())
    assert (record["stack"], record["pcr0"], record["instances"]) == (STACK, PCR0, [INSTANCE])


def test_every_local_problem_is_reported_before_anything_is_created(
    tmp_path: Path, fake_cdk: Path
) -> None:
    config = deploy_config(
        tmp_path / "app",
        pcr0=None,
        mode="development",
        account=None,
        instance_type="m5.xlarge",
        enclave={"cpu_count": 4},
        secrets={"backend": "local"},
        storage={"backend": "local"},
        kms={"backend": "local"},
        attestation={"backend": "simulated"},
        launcher={"backend": "process"},
    )
    (tmp_path / "app" / "artifacts" / "image.eif").unlink()
    aws, synth = StubbedAws(), FakeSynth()
    with pytest.raises(ConfigError) as caught:
        deploy(config, aws.deps(FakeClock(), synth), problems=["storage.options.x: Unknown field."])
    eif = tmp_path / "app" / "artifacts" / "image.eif"
    assert caught.value.errors == [
        "storage.options.x: Unknown field.",
        "mode is 'development': enclave deploy needs mode: production (Nitro attestation, AWS "
        "KMS, SSM and S3 backends, the nitro-cli launcher)",
        "account is not set: enclave deploy needs the 12-digit AWS account",
        "m5.xlarge has 4 vCPUs and 16384 MiB: enclave.cpu_count 4 leaves 0 for the host "
        "(needs ≥ 2)",
        f"enclave.eif {eif} does not exist: run enclave build first",
        f"no PCR0: {tmp_path / 'app' / 'artifacts' / 'pcr.json'} does not exist (run `enclave "
        "build`, or pass --pcr0)",
    ]
    assert (synth.calls, cdk_calls(fake_cdk)) == ([], [])  # and no AWS call (none was queued)


def test_credentials_for_another_account_stop_the_deploy(tmp_path: Path, fake_cdk: Path) -> None:
    config = deploy_config(tmp_path / "app")
    aws, synth = StubbedAws(), FakeSynth()
    aws.caller("999999999999")
    with pytest.raises(
        EnclaveError, match=f"credentials are for account 999999999999, .* {ACCOUNT}"
    ):
        deploy(config, aws.deps(FakeClock(), synth))
    assert (synth.calls, cdk_calls(fake_cdk)) == ([], [])


def test_a_busy_stack_is_not_touched(tmp_path: Path, fake_cdk: Path) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.stack(status="UPDATE_IN_PROGRESS")
    with pytest.raises(EnclaveError, match=f"stack {STACK} is busy \\(UPDATE_IN_PROGRESS\\)"):
        deploy(config, aws.deps(FakeClock(), FakeSynth()))
    assert cdk_calls(fake_cdk) == []


def test_a_new_image_on_the_stacks_own_key_is_refused(tmp_path: Path, fake_cdk: Path) -> None:
    config = deploy_config(tmp_path / "app", pcr0=OTHER_PCR0)
    aws = StubbedAws()
    aws.caller()
    aws.stack()
    parameter = {"Name": "/dev/hello/KMSKeyID", "Type": "String", "Value": OUTPUTS["KMSKeyID"]}
    aws.stubs["ssm"].add_response(
        "get_parameter", {"Parameter": parameter}, {"Name": "/dev/hello/KMSKeyID"}
    )
    with pytest.raises(EnclaveError) as caught:
        deploy(config, aws.deps(FakeClock(), FakeSynth()))
    assert str(caught.value) == (
        f"stack {STACK} is locked to PCR0 {PCR0[:16]}… and this EIF measures {OTHER_PCR0[:16]}…: "
        "its key cannot decrypt for a new image. Move the secrets to it first (enclave migrate "
        "--eif artifacts/image.eif), then deploy"
    )
    assert cdk_calls(fake_cdk) == []


def test_after_a_migration_the_update_keeps_the_stacks_key_locked_as_it_was(
    tmp_path: Path, fake_cdk: Path, s3: Any
) -> None:
    config = deploy_config(tmp_path / "app", pcr0=OTHER_PCR0)
    aws, synth = StubbedAws(s3), FakeSynth()
    aws.caller()
    aws.stack()
    migrated = {"Name": "/dev/hello/KMSKeyID", "Type": "String", "Value": "new-key-from-migrate"}
    aws.stubs["ssm"].add_response(
        "get_parameter", {"Parameter": migrated}, {"Name": "/dev/hello/KMSKeyID"}
    )
    aws.instances(SINGLE, [{"id": INSTANCE}])
    aws.run([INSTANCE], stdout="enclave already running\n")
    aws.run([INSTANCE], stdout=health(), command_id="cmd-2")
    aws.instances(SINGLE, [{"id": INSTANCE}])
    result = deploy(config, aws.deps(FakeClock(), synth))
    aws.assert_done()
    assert synth.calls[0][1] == PCR0  # the key policy cannot change: synthesized as it was
    assert result.pcr0 == OTHER_PCR0  # while the EIF uploaded is the migrated image
    assert any("comes from enclave migrate" in line for line in aws.lines)
    assert any("[3/6] cdk deploy: updating stack" in line for line in aws.lines)


def test_scaled_out_the_groups_instances_are_found_and_the_load_balancer_is_the_endpoint(
    tmp_path: Path, fake_cdk: Path, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = {k: v for k, v in OUTPUTS.items() if k != "InstanceID"}
    outputs["LoadBalancerDNS"] = "hello-nlb-0123.elb.us-east-1.amazonaws.com"
    outputs["AutoScalingGroupName"] = "devNitrohello-EnclaveHosts-ABC"
    monkeypatch.setenv("FAKE_CDK_OUTPUTS", json.dumps(outputs))
    config = deploy_config(tmp_path / "app", instances=2)
    aws = StubbedAws(s3)
    ids = ["i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2"]
    by_tag = {
        "Filters": [
            {"Name": "tag:aws:autoscaling:groupName", "Values": ["devNitrohello-EnclaveHosts-ABC"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    }
    aws.caller()
    aws.first_deploy()
    aws.instances(by_tag, [{"id": ids[0], "state": "pending"}])  # the group is still launching
    aws.instances(by_tag, [{"id": i} for i in ids])
    aws.run(ids, stdout="enclave starting (HTTP 202)\n")
    aws.run(ids, stdout=health(), command_id="cmd-2")
    aws.instances(by_tag, [{"id": i} for i in ids])
    clock = FakeClock()
    result = deploy(config, aws.deps(clock, FakeSynth(outputs)))
    aws.assert_done()
    assert clock.slept == [10.0]  # waited once for the second instance
    assert [s["InstanceIds"] for s in aws.sent] == [ids, ids]
    assert result.endpoints == ["https://hello-nlb-0123.elb.us-east-1.amazonaws.com:443"]


def test_a_new_instance_is_waited_for_until_ssm_knows_it(
    tmp_path: Path, fake_cdk: Path, s3: Any
) -> None:
    config = deploy_config(tmp_path / "app")
    aws, clock = StubbedAws(s3), FakeClock()
    aws.caller()
    aws.first_deploy()
    aws.instances(SINGLE, [{"id": INSTANCE}])
    aws.stubs["ssm"].add_client_error(
        "send_command", service_error_code="InvalidInstanceId", service_message="not managed"
    )
    aws.run([INSTANCE], stdout="enclave starting (HTTP 202)\n")
    aws.run([INSTANCE], stdout=health(), command_id="cmd-2")
    aws.instances(SINGLE, [{"id": INSTANCE}])
    deploy(config, aws.deps(clock, FakeSynth()))
    aws.assert_done()
    assert clock.slept[0] == 10.0  # SSM's agent registers after boot: retried, not failed


def test_a_start_that_fails_on_the_host_says_why(tmp_path: Path, fake_cdk: Path, s3: Any) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws(s3)
    aws.caller()
    aws.first_deploy()
    aws.instances(SINGLE, [{"id": INSTANCE}])
    aws.send([INSTANCE])
    aws.invocation(INSTANCE, status="InProgress", code=-1)
    aws.invocation(
        INSTANCE,
        status="Failed",
        code=1,
        stderr="POST http://127.0.0.1:8443/v1/start answered HTTP 500\n",
    )
    with pytest.raises(EnclaveError) as caught:
        deploy(config, aws.deps(FakeClock(), FakeSynth()))
    assert str(caught.value) == (
        f"starting the enclave failed on 1 instance(s): {INSTANCE}: Failed (exit 1) "
        "POST http://127.0.0.1:8443/v1/start answered HTTP 500"
    )


def test_an_enclave_that_never_runs_ends_the_wait_with_its_last_health(
    tmp_path: Path, fake_cdk: Path, s3: Any
) -> None:
    config = deploy_config(tmp_path / "app")
    aws, clock = StubbedAws(s3), FakeClock()
    aws.caller()
    aws.first_deploy()
    aws.instances(SINGLE, [{"id": INSTANCE}])
    aws.run([INSTANCE], stdout="enclave starting (HTTP 202)\n")
    polls = int(RUNNING_TIMEOUT_S / 10) + 1
    for number in range(polls):
        body = health("error", last_exit="exit code 1: E36 boot failure")
        aws.run([INSTANCE], stdout=body, command_id=f"cmd-h{number}")
    with pytest.raises(EnclaveError) as caught:
        deploy(config, aws.deps(clock, FakeSynth()))
    aws.assert_done()
    assert str(caught.value).startswith(
        f"the enclave was not running after 600 s: {INSTANCE}: error (exit code 1: E36 boot "
        "failure)"
    )


def test_a_cdk_failure_quotes_its_last_lines_and_the_bootstrap_command(
    tmp_path: Path, fake_cdk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "FAKE_CDK_FAIL",
        f"deploy=Error: {STACK}: SSM parameter /cdk-bootstrap/hnb659fds/version not found. Has "
        "the environment been bootstrapped? Please run 'cdk bootstrap'",
    )
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    aws.caller()
    aws.first_deploy()
    with pytest.raises(ToolFailed) as caught:
        deploy(config, aws.deps(FakeClock(), FakeSynth()))
    assert str(caught.value) == (
        f"cdk deploy failed with exit status 1 (run `cdk bootstrap aws://{ACCOUNT}/us-east-1` "
        "once, then again); its last lines:"
    )
    assert caught.value.details[-1].startswith(f" ❌  {STACK} failed: Error:")


def test_without_cdk_or_npx_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = deploy_config(tmp_path / "app")
    aws = StubbedAws()
    deps = aws.deps(FakeClock(), FakeSynth(), which=lambda name: None)
    with pytest.raises(EnclaveError) as caught:
        deploy(config, deps)
    assert str(caught.value) == (
        "enclave deploy needs the AWS CDK CLI: neither cdk nor npx is on PATH (install Node.js, "
        "then npm install -g aws-cdk)"
    )


def test_a_missing_cdk_app_names_the_extra_to_install(
    tmp_path: Path, fake_cdk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = deploy_config(tmp_path / "app")
    deps = StubbedAws().deps(FakeClock(), FakeSynth())
    deps.synthesize = None
    monkeypatch.setitem(sys.modules, "enclave_infra.synth", None)  # as if aws-cdk-lib were absent
    with pytest.raises(EnclaveError, match=r"pip install 'simple-enclave\[infra\]'"):
        deploy(config, deps)
    assert cdk_calls(fake_cdk) == []


def test_pcr0_comes_from_pcr_json_or_a_matching_pcr0_option(tmp_path: Path) -> None:
    config: Config = deploy_config(tmp_path / "app")
    assert resolve_pcr0(config, None) == PCR0
    assert resolve_pcr0(config, PCR0.upper()) == PCR0
    with pytest.raises(ValidationError, match="differs from .*pcr.json"):
        resolve_pcr0(config, OTHER_PCR0)
    with pytest.raises(ValidationError, match="96 hex digits"):
        resolve_pcr0(config, "abc")
    without = deploy_config(tmp_path / "other", pcr0=None)
    assert resolve_pcr0(without, OTHER_PCR0) == OTHER_PCR0


def test_outputs_of_nested_constructs_are_found_by_their_name() -> None:
    outputs = {"EnclaveInstanceID0A1B2C3D": "i-1", "KMSKeyID": "k"}
    assert find_output(outputs, "InstanceID") == "i-1"
    assert find_output(outputs, "KMSKeyID") == "k"
    assert find_output(outputs, "LoadBalancerDNS") is None


def test_step_5_says_what_came_back_when_ssm_returned_no_output() -> None:
    silent = Invocation(INSTANCE, "Success", 0, stdout="", stderr="")
    assert start_outcome(silent) == (
        "SSM Run Command Success (exit 0) with no output: the start script's lines did not come "
        "back (step 6 checks /health)"
    )
    noisy = Invocation(INSTANCE, "Success", 0, stdout="\n", stderr="curl: warning\n")
    assert start_outcome(noisy) == (
        "SSM Run Command Success (exit 0) with no output on stdout; stderr: curl: warning"
    )
    said = Invocation(
        INSTANCE, "Success", 0, stdout="fetched x\nenclave already running\n", stderr=""
    )
    assert start_outcome(said) == "enclave already running"
