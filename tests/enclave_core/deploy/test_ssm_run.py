"""The host scripts, run for real under ``sh`` against a stand-in supervisor, and RunCommand."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_core.config import Config
from enclave_core.deploy.ssm_run import (
    RunCommand,
    health_script,
    start_script,
    stop_script,
    supervisor_url,
)
from enclave_core.errors import AccessDenied, EnclaveError
from enclave_core.testing import dev_config_document, write_config
from tests.doubles.fake_supervisor import FakeSupervisor, running_supervisor
from tests.doubles.stubbed_aws import INSTANCE, FakeClock, StubbedAws, command_uuid

TOKEN = "ef" * 32
SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$FAKE_HOST_LOG"
case "$1" in
  show) cat "$FAKE_WORKDIR_FILE" 2>/dev/null ;;
  is-active) [ -f "$FAKE_ACTIVE" ] ;;
  restart) touch "$FAKE_ACTIVE" ;;
esac
"""
AWS = """#!/bin/sh
echo "aws $*" >> "$FAKE_HOST_LOG"
# aws s3 cp --only-show-errors --region R s3://bucket/key DEST
cp "$FAKE_S3/$(basename "$6")" "$7"
"""


@pytest.fixture
def supervisor() -> Iterator[FakeSupervisor]:
    """The host's supervisor, answering as a running one does."""
    with running_supervisor() as fake:
        state = {"status": "running", "restarts": 0}
        fake.answers.update(
            {
                ("GET", "/health"): (200, state),
                ("POST", "/v1/start"): (202, state),
                ("POST", "/v1/stop"): (200, state),
            }
        )
        yield fake


class Host:
    """A folder standing for the host: the app folder, fake systemctl and aws, a fake S3."""

    def __init__(self, root: Path, supervisor: FakeSupervisor) -> None:
        self.root = root
        self.workdir = root / "opt" / "app"
        port = supervisor.server.server_address[1]
        self.config: Config = write_config(
            self.workdir, dev_config_document(supervisor={"listen": f"127.0.0.1:{port}"})
        )
        token = self.workdir / ".enclave" / "supervisor" / "token"
        token.parent.mkdir(parents=True)
        token.write_text(TOKEN + "\n")
        bin_dir, s3 = root / "bin", root / "s3"
        bin_dir.mkdir()
        s3.mkdir()
        (s3 / "image.eif").write_bytes(b"the new image")
        for name, text in (("systemctl", SYSTEMCTL), ("aws", AWS)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        (root / "workdir").write_text(str(self.workdir))
        self.env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "FAKE_HOST_LOG": str(root / "host.log"),
            "FAKE_WORKDIR_FILE": str(root / "workdir"),
            "FAKE_ACTIVE": str(root / "active"),
            "FAKE_S3": str(s3),
        }

    def run(self, commands: list[str]) -> subprocess.CompletedProcess[str]:
        """Run the script as AWS-RunShellScript does: the lines as one ``sh`` script."""
        return subprocess.run(
            ["sh", "-c", "\n".join(commands)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )

    def log(self) -> list[str]:
        path = self.root / "host.log"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def host(tmp_path: Path, supervisor: FakeSupervisor) -> Host:
    return Host(tmp_path, supervisor)


def test_start_fetches_the_eif_restarts_an_inactive_supervisor_and_starts(
    host: Host, supervisor: FakeSupervisor
) -> None:
    done = host.run(start_script(host.config, bucket="eif-bucket", key="image.eif"))
    assert (done.returncode, done.stderr) == (0, "")
    eif = host.workdir / "artifacts" / "image.eif"
    assert done.stdout.splitlines() == [f"fetched {eif}", "enclave starting (HTTP 202)"]
    assert eif.read_bytes() == b"the new image"
    assert (
        f"aws s3 cp --only-show-errors --region us-east-1 s3://eif-bucket/image.eif {eif}.new"
        in (host.log())
    )
    assert "systemctl restart enclave-supervisor" in host.log()
    assert supervisor.requests[-1][:3] == ("POST", "/v1/start", f"Bearer {TOKEN}")


def test_start_of_a_running_enclave_is_fine_and_a_refusal_fails(
    host: Host, supervisor: FakeSupervisor
) -> None:
    (host.root / "active").touch()
    supervisor.answers[("POST", "/v1/start")] = (409, {})
    done = host.run(start_script(host.config, bucket="b", key="image.eif"))
    assert (done.returncode, done.stdout.splitlines()[-1]) == (0, "enclave already running")
    assert not any("restart" in line for line in host.log())
    supervisor.answers[("POST", "/v1/start")] = (500, {})
    done = host.run(start_script(host.config, bucket="b", key="image.eif"))
    assert done.returncode == 1
    assert done.stderr == f"POST {supervisor_url(host.config)}/v1/start answered HTTP 500\n"


def test_stop_says_what_happened_and_never_fails(host: Host, supervisor: FakeSupervisor) -> None:
    done = host.run(stop_script(host.config))
    assert (done.returncode, done.stdout) == (0, "enclave stopped\n")
    assert supervisor.requests[-1][:3] == ("POST", "/v1/stop", f"Bearer {TOKEN}")
    supervisor.server.shutdown()  # nobody answers any more
    supervisor.server.server_close()
    done = host.run(stop_script(host.config))
    assert done.returncode == 0
    assert done.stdout == "POST /v1/stop answered HTTP 000: the enclave goes with the instance\n"


def test_scripts_on_a_host_without_the_unit_say_so(host: Host) -> None:
    (host.root / "workdir").unlink()
    done = host.run(stop_script(host.config))
    assert done.returncode == 3
    assert "enclave-supervisor is not installed" in done.stderr


def test_health_prints_the_supervisors_body(host: Host) -> None:
    done = host.run(health_script(host.config))
    assert json.loads(done.stdout) == {"status": "running", "restarts": 0}


def test_values_from_enclave_yaml_are_quoted_for_the_shell(tmp_path: Path) -> None:
    config = write_config(tmp_path, dev_config_document(enclave={"eif": "my images/a'b.eif"}))
    script = "\n".join(start_script(config, bucket="b", key="image.eif"))
    assert "eif='my images/a'\"'\"'b.eif'" in script


def test_run_command_polls_until_every_instance_ends() -> None:
    aws, clock = StubbedAws(), FakeClock()
    other = "i-0ffffffffffffffff"
    aws.send([INSTANCE, other])
    aws.stubs["ssm"].add_client_error(
        "get_command_invocation", service_error_code="InvocationDoesNotExist"
    )
    aws.invocation(other, stdout="two")
    aws.invocation(INSTANCE, status="InProgress", code=-1)
    aws.invocation(INSTANCE, stdout="one")
    runner = RunCommand(aws.client("ssm"), sleep=clock.sleep, clock=clock.clock, poll_s=3)
    results = runner.run([INSTANCE, other], ["true"], comment="test", timeout_s=30)
    aws.assert_done()
    assert [(r.instance_id, r.ok, r.stdout) for r in results] == [
        (INSTANCE, True, "one"),
        (other, True, "two"),
    ]
    assert clock.slept == [3, 3]
    assert aws.sent[0]["Parameters"] == {"commands": ["true"], "executionTimeout": ["30"]}


def test_run_command_gives_up_at_its_deadline_and_maps_aws_errors() -> None:
    aws, clock = StubbedAws(), FakeClock()
    aws.send([INSTANCE])
    for _ in range(4):
        aws.invocation(INSTANCE, status="InProgress", code=-1)
    runner = RunCommand(aws.client("ssm"), sleep=clock.sleep, clock=clock.clock, poll_s=30)
    late = rf"Run Command {command_uuid('cmd-1')} \(slow\) did not finish on {INSTANCE} within 90 s"
    with pytest.raises(EnclaveError, match=late):
        runner.run([INSTANCE], ["sleep 100"], comment="slow", timeout_s=30)
    aws.stubs["ssm"].add_client_error(
        "send_command", service_error_code="AccessDeniedException", service_message="no"
    )
    with pytest.raises(AccessDenied, match="SSM SendCommand of i-0123456789abcdef0 failed"):
        runner.run([INSTANCE], ["true"], comment="denied", timeout_s=30)
