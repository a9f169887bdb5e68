"""Step 1 of ``enclave deploy``: every check before anything is created, and the wheelhouse.

Local first (all problems reported together, :class:`~enclave_core.errors.ConfigError`):
``mode: production``, ``account``, the stack name, the sizing rules, the EIF and its PCR0, the
backends' options found by the caller. Then the tools (the cdk CLI, the CDK app), the AWS
account of the credentials, the stack's state (busy? stuck after a failed create, see
:mod:`enclave_core.deploy.stack_state`? locked to which PCR0?), what an earlier deployment
retained (:mod:`enclave_core.deploy.retained`), and the hosts' wheels (``pip download``,
:mod:`enclave_core.deploy.wheelhouse`). Only the wheels are written, under the state
directory; a stack stuck after a failed create is deleted only when the caller says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from enclave_infra.naming import Adopted

from enclave_core.aws.clients import aws_errors, error_code
from enclave_core.config import Config
from enclave_core.deploy import sizing
from enclave_core.deploy.cdk import cdk_command
from enclave_core.deploy.retained import adopted_of, find_adoption
from enclave_core.deploy.stack import (
    Deps,
    check_account,
    describe_stack,
    find_output,
    resolve_pcr0,
    stack_name,
    stack_outputs,
    wheels_dir,
)
from enclave_core.deploy.stack_state import StuckStack, check, delete_failed_stack
from enclave_core.errors import ConfigError, EnclaveError, NotFound


@dataclass
class Preflight:
    """What step 1 found and prepared before anything is created."""

    stack: str
    #: The EIF's PCR0 (``--pcr0`` or ``artifacts/pcr.json``).
    pcr0: str
    #: The PCR0 the stack's key is synthesized for: the EIF's, or on an update the stack's own
    #: ``LockedPCR0`` (a key policy never changes; a migrated enclave uses another key).
    synth_pcr0: str
    existing: dict[str, Any] | None
    cdk: list[str]
    wheels: list[Path] = field(default_factory=list)
    #: What an earlier deployment retained and the stack uses (see
    #: :mod:`enclave_core.deploy.retained`); empty when everything is created afresh.
    adopted: Adopted = field(default_factory=Adopted)


def _local_problems(
    config: Config, pcr0: str | None, problems: Sequence[str]
) -> tuple[str, list[str]]:
    found = list(problems)
    if config.mode != "production":
        found.append(
            f"mode is {config.mode!r}: enclave deploy needs mode: production (Nitro attestation, "
            "AWS KMS, SSM and S3 backends, the nitro-cli launcher)"
        )
    if config.account is None:
        found.append("account is not set: enclave deploy needs the 12-digit AWS account")
    try:
        stack_name(config)
    except ConfigError as exc:
        found.append(str(exc))
    found += sizing.check(config)
    eif = config.resolve(config.enclave.eif)
    if not eif.is_file():
        found.append(f"enclave.eif {eif} does not exist: run enclave build first")
    try:
        chosen = resolve_pcr0(config, pcr0)
    except EnclaveError as exc:
        found.append(str(exc))
        chosen = ""
    return chosen, found


def _synth_pcr0(config: Config, deps: Deps, outputs: dict[str, str], pcr0: str) -> str:
    """The PCR0 to synthesize an update with; refuses an EIF the stack's key cannot serve."""
    locked = (find_output(outputs, "LockedPCR0") or "").lower()
    if not locked or locked == pcr0:
        return pcr0
    stack_key = find_output(outputs, "KMSKeyID")
    parameter = find_output(outputs, "KMSKeyParameter")
    in_use = None
    if parameter:
        with aws_errors("SSM", "GetParameter", parameter, codes={"ParameterNotFound": NotFound}):
            try:
                in_use = deps.clients("ssm").get_parameter(Name=parameter)["Parameter"]["Value"]
            except ClientError as exc:
                if error_code(exc) != "ParameterNotFound":
                    raise
                in_use = None  # deleted: the stack's own key is the one
    if in_use and in_use != stack_key:
        deps.progress(
            f"    the key in use ({in_use}) comes from enclave migrate: the stack's own key stays "
            f"locked to PCR0 {locked[:16]}…, the EIF (PCR0 {pcr0[:16]}…) runs on the migrated key"
        )
        return locked
    raise EnclaveError(
        f"stack {stack_name(config)} is locked to PCR0 {locked[:16]}… and this EIF measures "
        f"{pcr0[:16]}…: its key cannot decrypt for a new image. Move the secrets to it first "
        f"(enclave migrate --eif {config.enclave.eif}), then deploy"
    )


def preflight(
    config: Config,
    deps: Deps,
    *,
    pcr0: str | None,
    problems: Sequence[str] = (),
    delete_failed: Callable[[StuckStack], bool] | None = None,
) -> Preflight:
    """Step 1: every check that changes nothing in AWS, and the hosts' wheelhouse.

    :param problems: found by the caller (the backends' options), reported with the rest.
    :param delete_failed: asked when the stack is stuck after a failed create (it can only be
        deleted); True deletes it and goes on as a first deploy.
    :raises ConfigError: listing every problem found in enclave.yaml and the artifacts.
    :raises EnclaveError: the credentials are for another account, a tool is missing, the stack
        is busy or stuck (:class:`StuckStack`, naming the way out), the EIF does not fit the
        stack's key or the retained one, or pip cannot resolve the wheels.
    """
    chosen, found = _local_problems(config, pcr0, problems)
    if found:
        raise ConfigError("enclave deploy cannot start:\n" + "\n".join(found), found)
    cdk = cdk_command(needed_by="enclave deploy", which=deps.which)
    deps.synthesizer()  # the CDK app imports (the [infra] extra is installed)
    check_account(config, deps, needed_by="enclave deploy")
    stack = stack_name(config)
    cloudformation = deps.clients("cloudformation")
    existing = describe_stack(cloudformation, stack)
    if existing is not None:
        try:
            check(existing)
        except StuckStack as stuck:
            if not (stuck.deletable and delete_failed is not None and delete_failed(stuck)):
                raise
            delete_failed_stack(
                cloudformation,
                stuck,
                progress=deps.progress,
                sleep=deps.sleep,
                clock=deps.clock,
                describe=describe_stack,
            )
            existing = None
    synth_pcr0 = chosen
    if existing is not None:
        adopted = adopted_of(stack_outputs(existing))
        synth_pcr0 = _synth_pcr0(config, deps, stack_outputs(existing), chosen)
    else:
        adopted = find_adoption(config, deps.clients, pcr0=chosen, progress=deps.progress)
    deps.progress("    resolving the hosts' wheels (pip download)")
    wheels = deps.wheels(config, wheels_dir(config), echo=deps.echo)
    if not any(w.name.startswith("simple_enclave-") for w in wheels):
        raise EnclaveError(
            f"the hosts' wheelhouse {wheels_dir(config)} has no simple-enclave wheel"
        )
    return Preflight(stack, chosen, synth_pcr0, existing, cdk, wheels, adopted)
