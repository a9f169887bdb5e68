"""`enclave deploy`, `enclave destroy`, and the cloud half of `enclave status --cloud`.

The logic lives in :mod:`enclave_core.deploy.deployer`, :mod:`enclave_core.deploy.destroyer` and
:mod:`enclave_core.deploy.stack`; these commands add the questions and the printing. Their outside
world (boto3 clients, the CDK app, pip) comes from :data:`deps_factory`, which tests replace.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from enclave_core.cli.common import ConfigOption, EnclaveCommand
from enclave_core.config import Config
from enclave_core.deploy.deployer import DeployResult, Preflight, deploy
from enclave_core.deploy.destroyer import DestroyPlan, destroy, plan_destroy
from enclave_core.deploy.stack import Deps, cloud_status, default_deps, find_output
from enclave_core.deploy.stack_state import StuckStack
from enclave_core.errors import EnclaveError
from enclave_core.plugin.backends import validate_backends

#: Builds the commands' :class:`~enclave_core.deploy.stack.Deps`: ``deps_factory(config, progress=,
#: echo=)``. The injection point for tests (botocore Stubber clients, a fake synthesize).
deps_factory: Callable[..., Deps] = default_deps
SHOWN_OUTPUTS = ("KMSKeyID", "StorageBucketName", "EifBucketName", "EC2InstanceRoleARN")


def _indented(write: Callable[[str], None]) -> Callable[[str], None]:
    """A sink for a tool's output lines: indented under the step, blank lines dropped."""

    def echo(line: str) -> None:
        if line.strip():
            write(f"    {line}")

    return echo


def _ask(command: EnclaveCommand, question: str) -> str:
    """Print ``question`` and read one line of the answer ("" at end of input)."""
    command.app.stdout.write(question)
    command.app.stdout.flush()
    return str(command.app.stdin.readline()).strip()


class Deploy(EnclaveCommand):
    """Deploy the enclave to AWS: the stack, the EIF, the enclave started and running.

    Six numbered steps: checks (nothing is created before they pass), synthesize, cdk deploy,
    upload the EIF and the hosts' wheels, start the enclave (SSM Run Command), wait for it to be
    running. Run it again after changing instance_type or instances to scale. After enclave
    destroy, it adopts the retained buckets, role and key, and the data is readable again.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """``--pcr0 HEX`` and ``--yes``."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--pcr0",
            metavar="<hex>",
            help="the EIF's PCR0 (default: artifacts/pcr.json, written by enclave build)",
        )
        parser.add_argument(
            "--yes", action="store_true", help="do not ask before creating billable resources"
        )
        parser.add_argument(
            "--delete-failed-stack",
            action="store_true",
            help="when the stack is stuck after a failed create (ROLLBACK_COMPLETE, "
            "REVIEW_IN_PROGRESS...), delete it and deploy afresh without asking",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Deploy, then print where the app answers."""
        config = self.load(parsed_args)
        problems = validate_backends(config, self.plugins(config))
        deps = deps_factory(config, progress=self.write, echo=_indented(self.write))
        confirm = None if parsed_args.yes else (lambda checked: self._confirm(config, checked))
        delete_failed: Callable[[StuckStack], bool] | None = None
        if parsed_args.delete_failed_stack:
            delete_failed = lambda stuck: True  # noqa: E731 - the option is the answer
        elif not parsed_args.yes:
            delete_failed = self._ask_delete
        result = deploy(
            config,
            deps,
            pcr0=parsed_args.pcr0,
            problems=problems,
            confirm=confirm,
            delete_failed=delete_failed,
        )
        self._report(result)
        return 0

    def _ask_delete(self, stuck: StuckStack) -> bool:
        self.write(str(stuck))
        answer = _ask(self, f"Delete stack {stuck.stack} now and deploy afresh? [y/N] ")
        return answer.lower() in ("y", "yes")

    def _confirm(self, config: Config, checked: Preflight) -> bool:
        verb = "update" if checked.existing else "create"
        hosts = f"{config.instances} x {config.instance_type}"
        if config.instances > 1:
            hosts += " behind a network load balancer"
        self.write(
            f"enclave deploy will {verb} stack {checked.stack} in account {config.account}, "
            f"{config.region}: {hosts} (enclave: {config.enclave.cpu_count} vCPUs, "
            f"{config.enclave.memory_mib} MiB), a KMS key, S3 buckets and VPC endpoints, "
            "billed by AWS for as long as they exist (enclave destroy removes them)."
        )
        return _ask(self, "Continue? [y/N] ").lower() in ("y", "yes")

    def _report(self, result: DeployResult) -> None:
        self.write(f"deployed stack {result.stack} (PCR0 {result.pcr0[:16]}…)")
        for instance in result.instances:
            address = instance.get("public_ip") or instance.get("private_ip") or "no address"
            status = result.health.get(str(instance["id"]), {}).get("status", "unknown")
            self.write(f"  {instance['id']}: {instance['state']}, {address}, enclave {status}")
        for endpoint in result.endpoints:
            self.write(f"  endpoint: {endpoint}")
        for name in SHOWN_OUTPUTS:
            value = find_output(result.outputs, name)
            if value:
                self.write(f"  {name}: {value}")


class Destroy(EnclaveCommand):
    """Delete the deployed stack: the instances, the network, the load balancer.

    Shows what is lost for good and what remains (the retained buckets, role and key, the
    parameters the enclave wrote), asks you to type the stack name unless --force, records
    what remains for the next enclave deploy (which adopts it), stops the enclave and runs
    cdk destroy.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """``--force``."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--force", action="store_true", help="do not ask for the stack name first"
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Plan, warn, confirm, destroy."""
        config = self.load(parsed_args)
        deps = deps_factory(config, progress=self.write, echo=_indented(self.write))
        plan = plan_destroy(config, deps)
        if not plan.exists:
            self.write(
                f"stack {plan.stack} does not exist in account {config.account}, "
                f"{config.region}: nothing to destroy"
            )
            return 0
        self._warn(config, plan)
        if not parsed_args.force:
            typed = _ask(self, f"Type the stack name ({plan.stack}) to destroy it: ")
            if typed != plan.stack:
                raise EnclaveError(
                    f"destroy cancelled: {typed!r} is not the stack name; nothing was changed"
                )
        destroy(config, deps, plan)
        self.write(f"destroyed stack {plan.stack}")
        if plan.remains:
            self.write("still there, until you delete it:")
            for line in plan.remains:
                self.write(f"  - {line}")
        return 0

    def _warn(self, config: Config, plan: DestroyPlan) -> None:
        self.write(
            f"WARNING: enclave destroy deletes stack {plan.stack} (account {config.account}, "
            f"{config.region}). Lost for good:"
        )
        for line in plan.lost:
            self.write(f"  - {line}")
        self.write(
            "The enclave's secrets and its stored data cannot be recovered once the key is "
            "deleted: no backup, no AWS support case brings them back."
        )
        if plan.remains:
            self.write("What remains afterwards (delete it yourself when you no longer need it):")
            for line in plan.remains:
                self.write(f"  - {line}")


def cloud_status_of(command: ConfigOption, config: Config) -> dict[str, Any]:
    """The document `enclave status --cloud` shows (:class:`enclave_core.cli.lifecycle.Status`)."""

    def to_stderr(line: str) -> None:
        command.app.stderr.write(line + "\n")

    return cloud_status(config, deps_factory(config, progress=to_stderr, echo=to_stderr))
