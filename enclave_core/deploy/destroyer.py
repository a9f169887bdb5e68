"""``enclave destroy``: say exactly what is lost and what remains, then delete the stack.

:func:`plan_destroy` reads the plan from AWS (retained resources, the key's deletion window, the
parameters the enclave wrote itself); :func:`destroy` records the retained buckets, role and key
for the next ``enclave deploy`` (:mod:`enclave_core.deploy.retained`), stops the enclave through
Run Command, synthesizes the stack again and runs ``cdk destroy``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from enclave_core.aws.clients import aws_errors, map_client_error
from enclave_core.config import Config
from enclave_core.deploy.cdk import DESTROY_TIMEOUT_S, cdk_command, destroy_argv, run_cdk
from enclave_core.deploy.retained import parameter_name, record, retained_from_stack
from enclave_core.deploy.ssm_run import stop_script
from enclave_core.deploy.stack import (
    Deps,
    cdk_out,
    check_account,
    describe_stack,
    find_instances,
    outputs_file,
    record_file,
    resolve_pcr0,
    stack_name,
    stack_outputs,
    template_body,
)
from enclave_core.errors import EnclaveError

STEPS = 4
STOP_TIMEOUT_S = 120.0
RETAINED = frozenset({"Retain", "RetainExceptOnCreate", "Snapshot"})
KMS_DEFAULT_WINDOW_DAYS = 30
#: How many leftover parameter names the warning lists before "and N more".
SHOWN_PARAMETERS = 8
#: A placeholder PCR0 to synthesize with when none is known: cdk destroy only needs the name.
PLACEHOLDER_PCR0 = "0" * 96


@dataclass
class DestroyPlan:
    """What ``enclave destroy`` would do: the stack, its instances, what is lost, what stays."""

    stack: str
    exists: bool
    instance_ids: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    remains: list[str] = field(default_factory=list)
    #: The stack's outputs (buckets, role, key), for the record of what remains.
    outputs: dict[str, str] = field(default_factory=dict)
    #: The key ``KMSKeyID`` names when ``enclave migrate`` switched it, else None (the stack's).
    key_in_use: str | None = None


def _stack_resources(cloudformation: Any, stack: str) -> dict[str, tuple[str, str]]:
    """``{logical id: (type, physical id)}`` of the stack's resources."""
    found: dict[str, tuple[str, str]] = {}
    with aws_errors("CloudFormation", "ListStackResources", f"stack {stack}"):
        for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack):
            for item in page.get("StackResourceSummaries") or []:
                found[item["LogicalResourceId"]] = (
                    item["ResourceType"],
                    item.get("PhysicalResourceId") or item["LogicalResourceId"],
                )
    return found


def _parameters(ssm: Any, path: str) -> Iterator[dict[str, Any]]:
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=path, Recursive=True):
        yield from page.get("Parameters") or []


def _template_lines(
    template: dict[str, Any], resources: dict[str, tuple[str, str]]
) -> tuple[list[str], list[str]]:
    lost: list[str] = []
    remains: list[str] = []
    for logical, spec in (template.get("Resources") or {}).items():
        kind = str(spec.get("Type", ""))
        physical = resources.get(logical, (kind, logical))[1]
        policy = str(spec.get("DeletionPolicy", "Delete"))
        if kind == "AWS::KMS::Key":
            if policy in RETAINED:
                remains.append(f"KMS key {physical} (DeletionPolicy {policy}), still enabled")
            else:
                days = (spec.get("Properties") or {}).get("PendingWindowInDays")
                lost.append(
                    f"KMS key {physical}: scheduled for deletion, gone for good after "
                    f"{days or KMS_DEFAULT_WINDOW_DAYS} days; from then on nobody can decrypt "
                    "the secrets and the stored data it protects"
                )
        elif kind == "AWS::S3::Bucket" and policy in RETAINED:
            remains.append(
                f"S3 bucket {physical} (retained, with its objects; remove it with "
                f"aws s3 rb s3://{physical} --force)"
            )
        elif kind == "AWS::IAM::Role" and policy in RETAINED:
            remains.append(
                f"IAM role {physical} (retained: the key's policy names this role, and a role "
                "made anew would be another principal)"
            )
        elif policy in RETAINED:
            remains.append(f"{kind} {physical} (DeletionPolicy {policy})")
    return lost, remains


def _parameter_lines(
    config: Config, deps: Deps, resources: dict[str, tuple[str, str]]
) -> tuple[list[str], str | None]:
    """Lines for the parameters the enclave wrote and the migrated key; the key in use."""
    path = config.secrets_path.rstrip("/")
    ours = {physical for kind, physical in resources.values() if kind == "AWS::SSM::Parameter"}
    stack_keys = {physical for kind, physical in resources.values() if kind == "AWS::KMS::Key"}
    try:
        params = list(_parameters(deps.clients("ssm"), path))
    except (ClientError, BotoCoreError) as exc:
        error = map_client_error(exc, service="SSM", operation="GetParametersByPath", resource=path)
        return [
            f"parameters under {path}/ could not be listed ({error}): check them yourself"
        ], None
    lines = []
    recorded = parameter_name(config)
    left = sorted(str(p["Name"]) for p in params if p["Name"] not in ours | {recorded})
    if left:
        shown = ", ".join(left[:SHOWN_PARAMETERS])
        more = f" and {len(left) - SHOWN_PARAMETERS} more" if len(left) > SHOWN_PARAMETERS else ""
        lines.append(
            f"{len(left)} SSM parameter(s) the enclave wrote under {path}/, not part of the "
            f"stack: {shown}{more}"
        )
    in_use = {
        str(p.get("Value"))
        for p in params
        if str(p["Name"]) == f"{path}/KMSKeyID" and p.get("Value") not in (None, "", "UNSET")
    }
    keys = {
        str(p.get("Value"))
        for p in params
        if str(p["Name"]).endswith("KMSKeyID") and p.get("Value") not in (None, "", "UNSET")
    }
    for key in sorted(keys - stack_keys):
        lines.append(
            f"KMS key {key} (made by enclave migrate, not part of the stack), still enabled: "
            f"aws kms schedule-key-deletion --key-id {key} --pending-window-in-days 7"
        )
    migrated = sorted(in_use - stack_keys)
    return lines, (migrated[0] if migrated else None)


def plan_destroy(config: Config, deps: Deps) -> DestroyPlan:
    """Read the stack, its template, its resources and its parameters; nothing is changed."""
    check_account(config, deps, needed_by="enclave destroy")
    stack = stack_name(config)
    cloudformation = deps.clients("cloudformation")
    description = describe_stack(cloudformation, stack)
    if description is None:
        return DestroyPlan(stack, exists=False)
    instances = find_instances(deps.clients("ec2"), stack, stack_outputs(description))
    resources = _stack_resources(cloudformation, stack)
    lost, remains = _template_lines(template_body(cloudformation, stack), resources)
    ids = [str(i["id"]) for i in instances if i["state"] in ("pending", "running")]
    if ids:
        lost.insert(0, f"instance(s) {', '.join(ids)}, with the enclave and its memory")
    lost.append("the network, the instance profile and the parameters the stack itself created")
    lines, key_in_use = _parameter_lines(config, deps, resources)
    remains += lines
    remains.append(
        f"the record {parameter_name(config)} of the retained buckets, role and key: the next "
        "enclave deploy of this stack adopts them, and the data is readable again"
    )
    outputs = stack_outputs(description)
    return DestroyPlan(stack, True, ids, lost, remains, outputs, key_in_use)


def _record(config: Config, deps: Deps, plan: DestroyPlan) -> None:
    """Step 1: record what stays (:mod:`enclave_core.deploy.retained`), for the next deploy."""
    name = parameter_name(config)
    deps.progress(f"[1/{STEPS}] recording the retained buckets, role and key in {name}")
    try:
        retained = retained_from_stack(deps.clients, plan.outputs, plan.key_in_use)
        record(config, deps.clients, plan.stack, retained)
    except EnclaveError as exc:
        deps.progress(
            f"    warning: could not record them ({exc}); the next enclave deploy will not adopt "
            "the key, so the data will stay unreadable"
        )


def destroy(config: Config, deps: Deps, plan: DestroyPlan) -> None:
    """Record what stays, stop the enclave, synthesize, ``cdk destroy``; forget the local state."""
    stack = plan.stack
    # Everything destroy needs locally is checked before the enclave is stopped.
    base = cdk_command(needed_by="enclave destroy", which=deps.which)
    synthesize = deps.synthesizer()
    _record(config, deps, plan)
    if plan.instance_ids:
        deps.progress(f"[2/{STEPS}] stopping the enclave on {', '.join(plan.instance_ids)}")
        try:
            results = deps.run_command().run(
                plan.instance_ids,
                stop_script(config),
                comment=f"enclave destroy: stop {stack}",
                timeout_s=STOP_TIMEOUT_S,
            )
            for result in results:
                last = (result.stdout.strip().splitlines() or [result.status])[-1]
                deps.echo(f"{result.instance_id}: {last}")
        except EnclaveError as exc:
            deps.progress(f"    warning: could not stop the enclave ({exc}); destroying anyway")
    else:
        deps.progress(f"[2/{STEPS}] no running instance: nothing to stop")
    deps.progress(f"[3/{STEPS}] synthesizing stack {stack} (cdk destroy needs the app)")
    try:
        pcr0 = resolve_pcr0(config, None)
    except EnclaveError:
        pcr0 = PLACEHOLDER_PCR0
    assembly = cdk_out(config)
    assembly.parent.mkdir(parents=True, exist_ok=True)
    try:
        synthesize(config, assembly, pcr0=pcr0)
    except EnclaveError:
        raise
    except Exception as exc:  # jsii and CDK errors: named here, traceback with --debug
        raise EnclaveError(
            f"synthesizing stack {stack} failed: {type(exc).__name__}: {exc}"
        ) from exc
    deps.progress(f"[4/{STEPS}] cdk destroy: deleting stack {stack} (several minutes)")
    run_cdk(
        destroy_argv(base, assembly, stack),
        config,
        what="cdk destroy",
        echo=deps.echo,
        timeout_s=DESTROY_TIMEOUT_S,
    )
    for path in (outputs_file(config), record_file(config)):
        path.unlink(missing_ok=True)
