"""What `enclave deploy`, `destroy` and `status --cloud` share: the deployed stack, seen from here.

:class:`Deps` carries the outside world (boto3 clients by service, the CDK app's
``synthesize``, output sinks, clock), injected so tests run against botocore's Stubber, moto and
fake executables. The stack is ``{prefix}Nitro{name}``; its outputs are
``InstanceID``, ``EC2InstanceRoleARN``, ``KMSKeyID``, ``StorageBucketName``, ``EifBucketName``
and, scaled out (``instances: N``), ``LoadBalancerDNS``. Local state lives in the state
directory: ``cdk.out/`` (the synthesized assembly), ``cdk-outputs.json`` and ``deploy.json``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from enclave_infra import naming  # names only: no aws-cdk-lib needed

from enclave_core.aws.clients import AwsClients, aws_errors, error_code, map_client_error
from enclave_core.config import Config
from enclave_core.deploy.external import Which
from enclave_core.deploy.layout import pcr_path
from enclave_core.deploy.ssm_run import RunCommand, health_script
from enclave_core.deploy.wheelhouse import resolve as resolve_wheels
from enclave_core.errors import ConfigError, EnclaveError, NotFound, ValidationError

#: Where the EIF and the wheelhouse go in the EIF bucket (the CDK app's names).
EIF_OBJECT_KEY = naming.EIF_OBJECT_KEY
WHEELS_PREFIX = naming.WHEELS_PREFIX
HEALTH_TIMEOUT_S = 120.0
_HEX96 = re.compile(r"^[0-9a-fA-F]{96}$")


@dataclass
class Deps:
    """What deploy, destroy and status use from the outside world; tests inject fakes.

    :param clients: ``service -> boto3 client`` (``s3``, ``ssm``, ``cloudformation``, ``ec2``,
        ``sts``).
    :param synthesize: ``synthesize(config, outdir, *, pcr0)``; None imports
        ``enclave_infra.synth.synthesize`` when first needed.
    :param progress: receives the ``[k/N] ...`` lines; ``echo`` the tools' output (cdk, pip).
    :param wheels: ``wheels(config, dest, *, echo) -> [wheel paths]``: the hosts' wheelhouse
        (:func:`enclave_core.deploy.wheelhouse.resolve`, which runs ``pip download``).
    """

    clients: Callable[[str], Any]
    synthesize: Callable[..., Any] | None = None
    progress: Callable[[str], None] = print
    echo: Callable[[str], None] = print
    which: Which = shutil.which
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    wheels: Callable[..., list[Path]] = resolve_wheels

    def run_command(self) -> RunCommand:
        """A Run Command helper on this SSM client, with the injected clock."""
        return RunCommand(self.clients("ssm"), sleep=self.sleep, clock=self.clock)

    def synthesizer(self) -> Callable[..., Any]:
        """The CDK app's ``synthesize``, imported on first use."""
        if self.synthesize is None:
            try:
                from enclave_infra.synth import synthesize
            except ImportError as exc:
                raise EnclaveError(
                    f"the CDK app cannot be loaded ({exc}): install the deployment extra, "
                    "pip install 'simple-enclave[infra]'"
                ) from None
            self.synthesize = synthesize
        return self.synthesize


def default_deps(config: Config, **overrides: Any) -> Deps:
    """Deps with real boto3 clients in ``config.region`` (built lazily, standard retries)."""
    clients = AwsClients(region=config.region)
    return Deps(clients=clients.client, **overrides)


def check_account(config: Config, deps: Deps, *, needed_by: str) -> None:
    """``account`` is set and the credentials (STS GetCallerIdentity) are for it.

    :raises ConfigError: no account in enclave.yaml.
    :raises EnclaveError: the credentials are for another account.
    """
    if config.account is None:
        raise ConfigError(f"account is not set in enclave.yaml: {needed_by} needs it")
    with aws_errors("STS", "GetCallerIdentity", "the current credentials"):
        account = str(deps.clients("sts").get_caller_identity()["Account"])
    if account != config.account:
        raise EnclaveError(
            f"your AWS credentials are for account {account}, enclave.yaml says "
            f"{config.account}: use credentials (AWS_PROFILE) for {config.account}"
        )


def stack_name(config: Config) -> str:
    """``{prefix}Nitro{name}``, as the CDK app names it (``_`` and ``.`` become ``-``)."""
    return naming.stack_name(config)


def cdk_out(config: Config) -> Path:
    """The synthesized cloud assembly, ``<state>/cdk.out``."""
    return config.state_dir / "cdk.out"


def outputs_file(config: Config) -> Path:
    """``<state>/cdk-outputs.json``, written by ``cdk deploy --outputs-file``."""
    return config.state_dir / "cdk-outputs.json"


def wheels_dir(config: Config) -> Path:
    """``<state>/wheels``: the hosts' wheelhouse, resolved by ``enclave deploy``."""
    return config.state_dir / "wheels"


def record_file(config: Config) -> Path:
    """``<state>/deploy.json``: what the last successful ``enclave deploy`` deployed."""
    return config.state_dir / "deploy.json"


def find_output(outputs: Mapping[str, str], name: str) -> str | None:
    """Output ``name``; also found with the 8-hex suffix CDK adds to nested constructs' ids."""
    if name in outputs:
        return outputs[name]
    for key, value in outputs.items():
        if re.fullmatch(rf"(\w*?){re.escape(name)}[0-9A-F]{{8}}", key):
            return value
    return None


def read_pcr_file(config: Config) -> dict[str, str] | None:
    """``artifacts/pcr.json``, or None when absent.

    :raises ValidationError: it exists but has no 96-hex PCR0.
    """
    path = pcr_path(config)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValidationError(f"{path} cannot be read: {exc}") from None
    if not isinstance(doc, dict) or not _HEX96.match(str(doc.get("PCR0", ""))):
        raise ValidationError(f"{path} has no PCR0 of 96 hex digits: run `enclave build` again")
    return {k: str(v).lower() for k, v in doc.items()}


def resolve_pcr0(config: Config, given: str | None) -> str:
    """The PCR0 to lock the key to: ``--pcr0``, else ``artifacts/pcr.json``'s (they must agree).

    :raises ValidationError: none found, malformed, or the two disagree.
    """
    from_file = read_pcr_file(config)
    if given:
        if not _HEX96.match(given):
            raise ValidationError("--pcr0 must be 96 hex digits (a SHA-384)")
        if from_file and from_file["PCR0"] != given.lower():
            raise ValidationError(
                f"--pcr0 {given[:16].lower()}… differs from {pcr_path(config)} "
                f"({from_file['PCR0'][:16]}…): rebuild, or remove the stale pcr.json"
            )
        return given.lower()
    if from_file is None:
        raise ValidationError(
            f"no PCR0: {pcr_path(config)} does not exist (run `enclave build`, or pass --pcr0)"
        )
    return from_file["PCR0"]


def describe_stack(cloudformation: Any, stack: str) -> dict[str, Any] | None:
    """The stack's description, or None when it does not exist."""
    try:
        answer = cloudformation.describe_stacks(StackName=stack)
    except (ClientError, BotoCoreError) as exc:
        if isinstance(exc, ClientError) and error_code(exc) == "ValidationError":
            if "does not exist" in str(exc.response.get("Error", {}).get("Message", "")):
                return None
        raise map_client_error(
            exc, service="CloudFormation", operation="DescribeStacks", resource=f"stack {stack}"
        ) from None
    stacks = answer.get("Stacks") or []
    return dict(stacks[0]) if stacks else None


def stack_outputs(description: Mapping[str, Any]) -> dict[str, str]:
    """``{OutputKey: OutputValue}`` of a DescribeStacks entry."""
    return {o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs") or []}


def template_body(cloudformation: Any, stack: str) -> dict[str, Any]:
    """The stack's deployed template (CDK writes JSON; boto3 may hand it back parsed)."""
    with aws_errors("CloudFormation", "GetTemplate", f"stack {stack}"):
        body = cloudformation.get_template(StackName=stack)["TemplateBody"]
    parsed = json.loads(body) if isinstance(body, str) else body
    return dict(parsed) if isinstance(parsed, dict) else {}


def find_instances(ec2: Any, stack: str, outputs: Mapping[str, str]) -> list[dict[str, Any]]:
    """The stack's live instances: ``InstanceID``'s, or (scaled out) its auto-scaling group's.

    A group's instances carry the tag ``aws:autoscaling:groupName`` (the
    ``AutoScalingGroupName`` output); without that output, CloudFormation's stack-name tag.
    """
    instance_id = find_output(outputs, "InstanceID")
    group = find_output(outputs, "AutoScalingGroupName")
    live = {"Name": "instance-state-name", "Values": ["pending", "running"]}
    request: dict[str, Any]
    if instance_id:
        request = {"InstanceIds": [instance_id]}
    elif group:
        request = {"Filters": [{"Name": "tag:aws:autoscaling:groupName", "Values": [group]}, live]}
    else:
        request = {
            "Filters": [{"Name": "tag:aws:cloudformation:stack-name", "Values": [stack]}, live]
        }
    with aws_errors("EC2", "DescribeInstances", f"instances of stack {stack}"):
        answer = ec2.describe_instances(**request)
    found = []
    for reservation in answer.get("Reservations") or []:
        for item in reservation.get("Instances") or []:
            found.append(
                {
                    "id": item["InstanceId"],
                    "state": item.get("State", {}).get("Name"),
                    "type": item.get("InstanceType"),
                    "private_ip": item.get("PrivateIpAddress"),
                    "public_ip": item.get("PublicIpAddress"),
                }
            )
    return sorted(found, key=lambda i: str(i["id"]))


def parse_health(stdout: str) -> dict[str, Any]:
    """The supervisor's ``/health`` JSON from a Run Command's output."""
    try:
        doc = json.loads(stdout)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        return doc
    return {"status": "unreachable", "error": "the supervisor did not answer /health"}


def endpoints(
    config: Config, outputs: Mapping[str, str], instances: Iterable[Mapping[str, Any]]
) -> list[str]:
    """Where clients reach the app: the load balancer when scaled out, else each instance."""
    scheme = "https" if config.runtime.tls else "http"
    ports = [ingress.listen.rpartition(":")[2] for ingress in config.supervisor.ingress]
    balancer = find_output(outputs, "LoadBalancerDNS")
    hosts = (
        [balancer] if balancer else [i.get("public_ip") or i.get("private_ip") for i in instances]
    )
    return [f"{scheme}://{host}:{port}" for host in hosts if host for port in ports]


def health_over_ssm(
    config: Config, deps: Deps, instance_ids: list[str], *, comment: str
) -> dict[str, dict[str, Any]]:
    """Each instance's supervisor ``/health``, fetched by Run Command on the instance."""
    found: dict[str, dict[str, Any]] = {}
    for invocation in deps.run_command().run(
        instance_ids, health_script(config), comment=comment, timeout_s=HEALTH_TIMEOUT_S
    ):
        if invocation.status == "Success":
            found[invocation.instance_id] = parse_health(invocation.stdout)
        else:
            found[invocation.instance_id] = {
                "status": "unreachable",
                "error": f"SSM Run Command {invocation.status}: "
                f"{invocation.stderr.strip()[-200:] or 'no output'}",
            }
    return found


def cloud_status(config: Config, deps: Deps) -> dict[str, Any]:
    """``enclave status --cloud``: the stack, its outputs, its instances and their /health.

    :raises NotFound: the stack does not exist; ConfigError/EnclaveError: see check_account.
    """
    check_account(config, deps, needed_by="enclave status --cloud")
    stack = stack_name(config)
    description = describe_stack(deps.clients("cloudformation"), stack)
    if description is None:
        raise NotFound(
            f"stack {stack} does not exist (account {config.account}, {config.region}): "
            "run enclave deploy"
        )
    outputs = stack_outputs(description)
    instances = find_instances(deps.clients("ec2"), stack, outputs)
    running = [str(i["id"]) for i in instances if i["state"] == "running"]
    health = (
        health_over_ssm(config, deps, running, comment=f"enclave status {stack}") if running else {}
    )
    return {
        "stack": stack,
        "stack_status": description.get("StackStatus"),
        "region": config.region,
        "outputs": outputs,
        "instances": instances,
        "health": health,
        "endpoints": endpoints(config, outputs, instances),
    }
