"""Stand-ins for `enclave deploy`, `destroy` and `status --cloud` tests.

- :class:`StubbedAws`: real botocore clients (sts, cloudformation, ec2, ssm) under botocore's
  ``Stubber``, which checks every request's parameters and every canned answer's shape against
  the service model; SendCommand's parameters are captured to check the scripts sent.
- :class:`FakeSynth`: writes a real-shaped cloud assembly (``manifest.json`` + template) that the
  fake ``cdk`` (tests/doubles/tools/cdk) accepts, and records the PCR0 it was asked for.
- :func:`fake_wheels`: the hosts' wheelhouse without pip or a network.
- :class:`FakeClock`: ``sleep`` advances ``clock``, so polling loops end without waiting.
- :func:`deploy_config`: a production enclave.yaml with a built EIF and pcr.json beside it.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import yaml
from botocore.stub import ANY, Stubber

from enclave_core.config import Config, load_config
from enclave_core.deploy.stack import Deps
from enclave_core.kmspolicy.canonical import EnclaveKeyPolicy, render_policy

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "devNitrohello"
PCR0 = "ab" * 48
OTHER_PCR0 = "cd" * 48
INSTANCE = "i-0123456789abcdef0"
#: A name CloudFormation made (not the fixed ``dev-hello-eif-...``), so a first deploy against
#: moto's S3, where the test made this bucket, does not take it for a retained one to adopt.
EIF_BUCKET = "devnitrohello-enclaveeifbucket-1a2b3c4d5e6f"
EIF_BYTES = b".eif fake image for deploy tests\n"
OUTPUTS = {
    "InstanceID": INSTANCE,
    "EC2InstanceRoleARN": f"arn:aws:iam::{ACCOUNT}:role/devNitrohello-Role",
    "KMSKeyID": "1234abcd-12ab-34cd-56ef-1234567890ab",
    "KMSKeyParameter": "/dev/hello/KMSKeyID",
    "LockedPCR0": PCR0,
    "StorageBucketName": "dev-hello-storage-123456789012-us-east-1",
    "EifBucketName": EIF_BUCKET,
    "LogsBucketName": "devnitrohello-enclaveaccesslogs-9z8y7x6w5v4u",
}
CREATED = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


def command_uuid(label: str) -> str:
    """A CommandId (SSM wants 36 characters) standing for ``label``."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, label))


def deploy_document(**overrides: Any) -> dict[str, Any]:
    """A production enclave.yaml for the stack ``devNitrohello``."""
    doc: dict[str, Any] = {
        "name": "hello",
        "prefix": "dev",
        "mode": "production",
        "region": REGION,
        "account": ACCOUNT,
        "instance_type": "m6i.xlarge",
        "secrets": {"backend": "ssm", "options": {}},
        "storage": {"backend": "s3", "options": {"bucket": OUTPUTS["StorageBucketName"]}},
        "kms": {"backend": "aws", "options": {}},
        "attestation": {"backend": "nitro", "options": {}},
        "launcher": {"backend": "nitro-cli", "options": {}},
    }
    doc.update(overrides)
    return doc


def deploy_config(folder: Path, *, pcr0: str | None = PCR0, **overrides: Any) -> Config:
    """Write enclave.yaml, ``artifacts/image.eif`` and ``artifacts/pcr.json``; load the config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "enclave.yaml").write_text(yaml.safe_dump(deploy_document(**overrides)))
    artifacts = folder / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "image.eif").write_bytes(EIF_BYTES)
    if pcr0:
        pcrs = {"PCR0": pcr0, "PCR1": "11" * 48, "PCR2": "22" * 48}
        (artifacts / "pcr.json").write_text(json.dumps(pcrs))
    return load_config(folder / "enclave.yaml")


class FakeClock:
    """A monotonic clock that only ``sleep`` moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeSynth:
    """``synthesize(config, outdir, *, pcr0)`` writing a minimal real-shaped cloud assembly."""

    def __init__(self, outputs: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[Path, str]] = []
        self.adopted: list[Any] = []  # what each call was asked to adopt (None: nothing)
        self.outputs = dict(OUTPUTS if outputs is None else outputs)

    def __call__(
        self, config: Config, outdir: Path, *, pcr0: str, adopted: Any | None = None
    ) -> Any:
        self.calls.append((Path(outdir), pcr0))
        self.adopted.append(adopted)
        outdir.mkdir(parents=True, exist_ok=True)
        template = {
            "Resources": {"Key": {"Type": "AWS::KMS::Key", "Properties": {}}},
            "Outputs": {key: {"Value": "token"} for key in self.outputs},
        }
        (outdir / f"{STACK}.template.json").write_text(json.dumps(template))
        manifest = {
            "version": "36.0.0",
            "artifacts": {
                STACK: {
                    "type": "aws:cloudformation:stack",
                    "environment": f"aws://unknown-account/{config.region}",
                    "properties": {"templateFile": f"{STACK}.template.json"},
                }
            },
        }
        (outdir / "manifest.json").write_text(json.dumps(manifest))
        return SimpleNamespace(outdir=outdir, stack_names=[STACK])


WHEELS = ("simple_enclave-0.1.0-py3-none-any.whl", "loguru-0.7.3-py3-none-any.whl")


def fake_wheels(config: Config, dest: Path, *, echo: Callable[[str], None]) -> list[Path]:
    """The wheelhouse ``pip download`` would fill, without pip."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WHEELS:
        (dest / name).write_bytes(b"PK\x03\x04 " + name.encode())
        echo(f"Saved {dest / name}")
    return sorted(dest / name for name in WHEELS)


class StubbedAws:
    """Stubbed boto3 clients by service; ``s3`` is a real client (against moto) when given."""

    SERVICES = ("sts", "cloudformation", "ec2", "ssm", "kms", "iam", "s3")

    def __init__(self, s3: Any = None) -> None:
        session = boto3.session.Session(region_name=REGION)
        self.clients: dict[str, Any] = {name: session.client(name) for name in self.SERVICES}
        self.stubs = {name: Stubber(client) for name, client in self.clients.items()}
        for stub in self.stubs.values():
            stub.activate()
        if s3 is not None:
            self.clients["s3"] = s3  # a real one: the stubbed s3 is unused
        self.sent: list[dict[str, Any]] = []
        self.put: list[dict[str, Any]] = []  # PutParameter's parameters
        self.clients["ssm"].meta.events.register(
            "provide-client-params.ssm.SendCommand", self._capture
        )
        self.clients["ssm"].meta.events.register(
            "provide-client-params.ssm.PutParameter",
            lambda params, **_: self.put.append(dict(params)),
        )

    def _capture(self, params: dict[str, Any], **_: Any) -> None:
        self.sent.append(json.loads(json.dumps(params)))

    def client(self, name: str) -> Any:
        return self.clients[name]

    def deps(self, clock: FakeClock, synth: FakeSynth, **overrides: Any) -> Deps:
        """Deps over these clients, recording progress and tool lines in ``self.lines``."""
        self.lines: list[str] = []
        base: dict[str, Any] = {
            "clients": self.client,
            "synthesize": synth,
            "progress": self.lines.append,
            "echo": lambda line: self.lines.append(f"    {line}"),
            "sleep": clock.sleep,
            "clock": clock.clock,
            "wheels": fake_wheels,
        }
        base.update(overrides)
        return Deps(**base)

    def assert_done(self) -> None:
        for stub in self.stubs.values():
            stub.assert_no_pending_responses()

    # -- canned answers, queued in call order ------------------------------------------------

    def caller(self, account: str = ACCOUNT) -> None:
        arn = f"arn:aws:iam::{account}:user/deployer"
        answer = {"UserId": "AIDAEXAMPLE", "Account": account, "Arn": arn}
        self.stubs["sts"].add_response("get_caller_identity", answer, {})

    def no_stack(self) -> None:
        self.stubs["cloudformation"].add_client_error(
            "describe_stacks",
            service_error_code="ValidationError",
            service_message=f"Stack with id {STACK} does not exist",
            http_status_code=400,
            expected_params={"StackName": STACK},
        )

    def first_deploy(self) -> None:
        """No stack, no record of a destroyed one, no bucket of the stack's fixed names."""
        self.no_stack()
        self.no_record()
        if self.clients["s3"] is self.stubs["s3"].client:  # moto's S3 answers for itself
            for name in (OUTPUTS["StorageBucketName"], "dev-hello-eif-123456789012-us-east-1"):
                self.stubs["s3"].add_client_error(
                    "head_bucket",
                    service_error_code="404",
                    service_message="Not Found",
                    http_status_code=404,
                    expected_params={"Bucket": name, "ExpectedBucketOwner": ACCOUNT},
                )

    def key_policy(
        self, key_id: str = OUTPUTS["KMSKeyID"], *, pcr0: str = PCR0, role: str | None = None
    ) -> None:
        """GetKeyPolicy of ``key_id``: the canonical policy ``enclave deploy``'s key has."""
        policy = render_policy(
            EnclaveKeyPolicy(
                principal=role or OUTPUTS["EC2InstanceRoleARN"],
                pcr0=pcr0,
                account_root=f"arn:aws:iam::{ACCOUNT}:root",
            )
        )
        self.stubs["kms"].add_response(
            "get_key_policy",
            {"Policy": json.dumps(policy), "PolicyName": "default"},
            {"KeyId": key_id, "PolicyName": "default"},
        )

    def put_record(self) -> None:
        """PutParameter of ``/dev/hello/Retained`` (its value is checked by the test)."""
        self.stubs["ssm"].add_response("put_parameter", {"Version": 1}, None)

    def record(self, resources: dict[str, str]) -> None:
        """``/dev/hello/Retained`` holds ``resources`` (what an ``enclave destroy`` recorded)."""
        value = json.dumps({"stack": STACK, "recorded_at": "2030-01-01T00:00:00+00:00",
                            "resources": resources})  # fmt: skip
        answer = {"Parameter": {"Name": "/dev/hello/Retained", "Type": "String", "Value": value}}
        self.stubs["ssm"].add_response("get_parameter", answer, {"Name": "/dev/hello/Retained"})

    def no_record(self) -> None:
        """No ``/dev/hello/Retained``: nothing left by an earlier ``enclave destroy``."""
        self.stubs["ssm"].add_client_error(
            "get_parameter",
            service_error_code="ParameterNotFound",
            service_message="not found",
            http_status_code=400,
            expected_params={"Name": "/dev/hello/Retained"},
        )

    def stack(
        self,
        outputs: dict[str, str] | None = None,
        status: str = "CREATE_COMPLETE",
        reason: str | None = None,
    ) -> None:
        described = {
            "StackName": STACK,
            "StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/1",
            "CreationTime": CREATED,
            "StackStatus": status,
            **({"StackStatusReason": reason} if reason else {}),
            "Outputs": [
                {"OutputKey": k, "OutputValue": v} for k, v in (outputs or OUTPUTS).items()
            ],
        }
        self.stubs["cloudformation"].add_response(
            "describe_stacks", {"Stacks": [described]}, {"StackName": STACK}
        )

    def instances(self, request: dict[str, Any], found: list[dict[str, Any]]) -> None:
        items = [
            {
                "InstanceId": i["id"],
                "InstanceType": "m6i.xlarge",
                "State": {"Code": 16, "Name": i.get("state", "running")},
                "PrivateIpAddress": i.get("private_ip", "10.0.1.23"),
            }
            for i in found
        ]
        answer = {"Reservations": [{"ReservationId": "r-1", "Instances": items}]}
        self.stubs["ec2"].add_response("describe_instances", answer, request)

    def send(self, ids: list[str], command_id: str = "cmd-1") -> None:
        expected = {
            "InstanceIds": ids,
            "DocumentName": "AWS-RunShellScript",
            "Comment": ANY,
            "Parameters": ANY,
        }
        answer = {"Command": {"CommandId": command_uuid(command_id), "InstanceIds": ids}}
        self.stubs["ssm"].add_response("send_command", answer, expected)

    def invocation(
        self,
        instance_id: str,
        *,
        status: str = "Success",
        code: int = 0,
        stdout: str = "",
        stderr: str = "",
        command_id: str = "cmd-1",
    ) -> None:
        answer = {
            "CommandId": command_uuid(command_id),
            "InstanceId": instance_id,
            "Status": status,
            "ResponseCode": code,
            "StandardOutputContent": stdout,
            "StandardErrorContent": stderr,
        }
        params = {"CommandId": command_uuid(command_id), "InstanceId": instance_id}
        self.stubs["ssm"].add_response("get_command_invocation", answer, params)

    def run(self, ids: list[str], stdout: str = "", command_id: str = "cmd-1") -> None:
        """A Run Command on ``ids`` that succeeds at the first poll, printing ``stdout``."""
        self.send(ids, command_id)
        for instance_id in ids:
            self.invocation(instance_id, stdout=stdout, command_id=command_id)


def health(status: str = "running", **extra: Any) -> str:
    """A supervisor /health body."""
    return json.dumps({"status": status, "enclave_id": "i-1-enc1", "restarts": 0, **extra})
