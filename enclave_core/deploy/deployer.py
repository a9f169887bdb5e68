"""``enclave deploy``: from a built EIF to a running enclave on AWS, in six numbered steps.

Checks (:mod:`enclave_core.deploy.preflight`), synthesize ``{prefix}Nitro{name}``, ``cdk deploy``
(:mod:`enclave_core.deploy.cdk`), upload the EIF and the wheels, start the enclave on every host
through Run Command (:mod:`enclave_core.deploy.ssm_run`), and wait until every ``/health`` says
``running``; then record ``<state>/deploy.json``. Running it again updates the stack in place; a
new PCR0 goes through ``enclave migrate`` first, since the key policy never changes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from enclave_infra.naming import Adopted

from enclave_core.aws.clients import aws_errors, map_client_error
from enclave_core.config import Config
from enclave_core.deploy.cdk import DEPLOY_TIMEOUT_S, deploy_argv, run_cdk
from enclave_core.deploy.preflight import Preflight, preflight
from enclave_core.deploy.ssm_run import Invocation, start_script
from enclave_core.deploy.stack import (
    EIF_OBJECT_KEY,
    WHEELS_PREFIX,
    Deps,
    cdk_out,
    endpoints,
    find_instances,
    find_output,
    health_over_ssm,
    outputs_file,
    record_file,
    stack_name,
)
from enclave_core.deploy.stack_state import StuckStack
from enclave_core.errors import BackendError, EnclaveError

STEPS = 6
#: Step 5 waits for a new host's first boot (packages, wheels, enclave host install) too.
START_TIMEOUT_S = 1500.0
#: How long step 6 waits for every enclave to be running.
RUNNING_TIMEOUT_S = 600.0
RUNNING_POLL_S = 10.0
#: How long step 5 waits for an auto-scaling group to launch its instances.
INSTANCES_TIMEOUT_S = 600.0


@dataclass
class DeployResult:
    """What ``enclave deploy`` deployed."""

    stack: str
    pcr0: str
    outputs: dict[str, str]
    instances: list[dict[str, Any]]
    endpoints: list[str]
    health: dict[str, dict[str, Any]] = field(default_factory=dict)


def _step(deps: Deps, k: int, text: str) -> None:
    deps.progress(f"[{k}/{STEPS}] {text}")


def upload(config: Config, deps: Deps, bucket: str, wheels: Sequence[Path]) -> None:
    """Step 4: the wheels under ``wheels/``, then the EIF to ``s3://<bucket>/image.eif``.

    A new host's first boot starts installing once ``image.eif`` and the simple-enclave wheel
    are there: the EIF goes last, so no host ever copies half a wheelhouse.
    """
    eif = config.resolve(config.enclave.eif)
    s3 = deps.clients("s3")
    for path, key in [*((w, WHEELS_PREFIX + w.name) for w in wheels), (eif, EIF_OBJECT_KEY)]:
        where = f"{path.name} to s3://{bucket}/{key}"
        try:
            s3.upload_file(str(path), bucket, key)
        except S3UploadFailedError as exc:
            raise BackendError(f"S3 upload of {where} failed: {exc}") from None
        except (ClientError, BotoCoreError) as exc:
            raise map_client_error(
                exc, service="S3", operation="PutObject", resource=where
            ) from None


def point_access_logs(deps: Deps, adopted: Adopted, outputs: dict[str, str]) -> None:
    """Step 4: adopted buckets log their access to this stack's log bucket.

    Their logging still names the destroyed deployment's log bucket, and CloudFormation sets
    logging only on buckets it owns; the stack's log bucket already lets S3 deliver them.
    """
    logs = find_output(outputs, "LogsBucketName")
    targets = ((adopted.storage_bucket, "storage/"), (adopted.eif_bucket, "eif/"))
    for bucket, prefix in targets:
        if not (bucket and logs):
            continue
        status = {"LoggingEnabled": {"TargetBucket": logs, "TargetPrefix": prefix}}
        with aws_errors("S3", "PutBucketLogging", bucket):
            deps.clients("s3").put_bucket_logging(Bucket=bucket, BucketLoggingStatus=status)
        deps.progress(f"    access logs of the adopted bucket {bucket} go to s3://{logs}/{prefix}")


def wait_instances(config: Config, deps: Deps, outputs: dict[str, str]) -> list[str]:
    """The ids of the stack's ``instances`` hosts, once that many are pending or running.

    A single instance exists when ``cdk deploy`` returns; an auto-scaling group may still be
    launching its instances then.
    """
    stack = stack_name(config)
    deadline = deps.clock() + INSTANCES_TIMEOUT_S
    while True:
        found = find_instances(deps.clients("ec2"), stack, outputs)
        ids = [str(i["id"]) for i in found if i["state"] in ("pending", "running")]
        if len(ids) >= config.instances:
            return ids
        if deps.clock() >= deadline:
            raise EnclaveError(
                f"stack {stack} has {len(ids)} of its {config.instances} instance(s) after "
                f"{INSTANCES_TIMEOUT_S:g} s: see its auto-scaling group's activity"
            )
        deps.sleep(RUNNING_POLL_S)


def start_enclaves(config: Config, deps: Deps, ids: list[str], bucket: str) -> None:
    """Step 5: fetch the EIF and start the enclave on every instance."""
    script = start_script(config, bucket=bucket, key=EIF_OBJECT_KEY)
    results = deps.run_command().run(
        ids,
        script,
        comment=f"enclave deploy: start {stack_name(config)}",
        timeout_s=START_TIMEOUT_S,
    )
    failed = [r for r in results if not r.ok]
    if failed:
        detail = "; ".join(
            f"{r.instance_id}: {r.status} (exit {r.response_code}) "
            f"{(r.stderr.strip() or r.stdout.strip())[-300:]}"
            for r in failed
        )
        raise EnclaveError(f"starting the enclave failed on {len(failed)} instance(s): {detail}")
    for result in results:
        deps.echo(f"{result.instance_id}: {start_outcome(result)}")


def start_outcome(result: Invocation) -> str:
    """What step 5 says for one host: the start script's last line, or what came back instead.

    The script prints where it fetched the EIF and how the supervisor answered; a Run Command
    that succeeded with no output at all is reported as such (step 6 then checks /health),
    never as "started".
    """
    lines = result.stdout.strip().splitlines()
    if lines:
        return lines[-1]
    came_back = f"SSM Run Command {result.status} (exit {result.response_code}) with no output"
    errors = result.stderr.strip().splitlines()
    if errors:
        return f"{came_back} on stdout; stderr: {errors[-1][-300:]}"
    return f"{came_back}: the start script's lines did not come back (step 6 checks /health)"


def wait_running(config: Config, deps: Deps, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Step 6: poll ``/health`` on every instance until all say ``running``."""
    deadline = deps.clock() + RUNNING_TIMEOUT_S
    comment = f"enclave deploy: health {stack_name(config)}"
    while True:
        health = health_over_ssm(config, deps, ids, comment=comment)
        waiting = {i: h for i, h in health.items() if h.get("status") != "running"}
        if not waiting:
            return health
        if deps.clock() >= deadline:
            detail = "; ".join(
                f"{i}: {h.get('status')}" + (f" ({why})" if (why := _why(h)) else "")
                for i, h in sorted(waiting.items())
            )
            raise EnclaveError(
                f"the enclave was not running after {RUNNING_TIMEOUT_S:g} s: {detail} (see "
                "journalctl -u enclave-supervisor on the instance, through SSM Session Manager)"
            )
        deps.sleep(RUNNING_POLL_S)


def _why(health: dict[str, Any]) -> str:
    """What a /health document says about a stopped or failing enclave."""
    return str(health.get("error") or health.get("last_exit") or "")


def _read_outputs(config: Config, stack: str) -> dict[str, str]:
    path = outputs_file(config)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EnclaveError(f"cdk deploy wrote no readable {path}: {exc}") from None
    outputs = doc.get(stack) if isinstance(doc, dict) else None
    if not isinstance(outputs, dict):
        raise EnclaveError(f"{path} has no outputs for stack {stack}")
    return {str(k): str(v) for k, v in outputs.items()}


def _record(config: Config, result: DeployResult) -> None:
    path = record_file(config)
    doc = {
        "stack": result.stack,
        "account": config.account,
        "region": config.region,
        "pcr0": result.pcr0,
        "instances": [i["id"] for i in result.instances],
        "outputs": result.outputs,
        "endpoints": result.endpoints,
        "deployed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def deploy(
    config: Config,
    deps: Deps,
    *,
    pcr0: str | None = None,
    problems: Sequence[str] = (),
    confirm: Callable[[Preflight], bool] | None = None,
    delete_failed: Callable[[StuckStack], bool] | None = None,
) -> DeployResult:
    """Run the six steps of the module docstring; return what was deployed and where.

    :param confirm: asked after step 1, before anything is created; False cancels.
    :param delete_failed: asked in step 1 when the stack is stuck after a failed create;
        True deletes it first (see :func:`~enclave_core.deploy.preflight.preflight`).
    :raises EnclaveError: a step failed (the earlier steps' work stays: run deploy again).
    """
    stack = stack_name(config)
    _step(deps, 1, "checking enclave.yaml, sizing, the EIF, the tools and the AWS account")
    checked = preflight(config, deps, pcr0=pcr0, problems=problems, delete_failed=delete_failed)
    chosen = checked.pcr0
    verb = "updating" if checked.existing else "creating"
    if confirm is not None and not confirm(checked):
        raise EnclaveError("deploy cancelled: nothing was created or changed")

    _step(deps, 2, f"synthesizing stack {stack} (key locked to PCR0 {checked.synth_pcr0[:16]}…)")
    assembly = cdk_out(config)
    assembly.parent.mkdir(parents=True, exist_ok=True)
    try:
        adopted = {"adopted": checked.adopted} if checked.adopted else {}
        deps.synthesizer()(config, assembly, pcr0=checked.synth_pcr0, **adopted)
    except EnclaveError:
        raise
    except Exception as exc:  # jsii and CDK errors: name them, the traceback is for --debug
        raise EnclaveError(
            f"synthesizing stack {stack} failed: {type(exc).__name__}: {exc}"
        ) from exc

    _step(deps, 3, f"cdk deploy: {verb} stack {stack} in {config.region} (several minutes)")
    argv = deploy_argv(checked.cdk, assembly, outputs_file(config), stack)
    run_cdk(argv, config, what="cdk deploy", echo=deps.echo, timeout_s=DEPLOY_TIMEOUT_S)
    outputs = _read_outputs(config, stack)

    bucket = find_output(outputs, "EifBucketName")
    if not bucket:
        raise EnclaveError(f"stack {stack} has no EifBucketName output")
    _step(
        deps,
        4,
        f"uploading {Path(config.enclave.eif).name} and {len(checked.wheels)} wheels to "
        f"s3://{bucket}/",
    )
    point_access_logs(deps, checked.adopted, outputs)
    upload(config, deps, bucket, checked.wheels)

    ids = wait_instances(config, deps, outputs)
    _step(deps, 5, f"starting the enclave on {', '.join(ids)} (SSM Run Command)")
    start_enclaves(config, deps, ids, bucket)

    _step(deps, 6, "waiting for the supervisor's /health to say running")
    health = wait_running(config, deps, ids)
    instances = find_instances(deps.clients("ec2"), stack, outputs)  # addresses are known now
    result = DeployResult(stack, chosen, outputs, instances, endpoints(config, outputs, instances))
    result.health = health
    _record(config, result)
    return result
