"""What a CloudFormation stack's status means for ``enclave deploy``, and the way out of each.

Every status falls in one of four kinds: ``ready`` (deploy updates it), ``busy`` (an operation
runs: wait), ``failed_create`` (a create that never completed: nothing can update it, it can
only be deleted, which ``enclave deploy --delete-failed-stack`` does) and ``rollback_failed``
(an update whose rollback failed: CloudFormation's continue-update-rollback first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from enclave_core.aws.clients import aws_errors
from enclave_core.errors import EnclaveError

Kind = Literal["ready", "busy", "failed_create", "rollback_failed"]

#: A stack in these states holds no working deployment and cannot be updated: only deleted.
#: ``REVIEW_IN_PROGRESS`` is a stack made for a change set that was never executed (cdk deploy
#: interrupted); ``ROLLBACK_*`` a first create that failed; ``DELETE_FAILED`` a destroy that did
#: not finish.
FAILED_CREATE = frozenset(
    {"REVIEW_IN_PROGRESS", "CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"}
)
ROLLBACK_FAILED = frozenset({"UPDATE_ROLLBACK_FAILED", "IMPORT_ROLLBACK_FAILED"})
#: How long ``--delete-failed-stack`` waits for the deletion.
DELETE_TIMEOUT_S = 1800.0
DELETE_POLL_S = 10.0


def kind_of(status: str) -> Kind:
    """The kind of a ``StackStatus`` (see the module docstring)."""
    if status in FAILED_CREATE:
        return "failed_create"
    if status in ROLLBACK_FAILED:
        return "rollback_failed"
    if status.endswith("_IN_PROGRESS"):
        return "busy"
    return "ready"


class StuckStack(EnclaveError):
    """A stack state ``enclave deploy`` cannot go on from; the message says the way out."""

    def __init__(self, stack: str, status: str, reason: str = "") -> None:
        self.stack, self.status, self.reason = stack, status, reason
        super().__init__(stuck_message(stack, status, reason))

    @property
    def deletable(self) -> bool:
        """Whether the way out is to delete the stack (``--delete-failed-stack``)."""
        return kind_of(self.status) == "failed_create"


def stuck_message(stack: str, status: str, reason: str = "") -> str:
    """One line: the state, why (CloudFormation's reason), and what to do."""
    why = f": {reason}" if reason else ""
    kind = kind_of(status)
    if kind == "busy":
        return (
            f"stack {stack} is busy ({status}{why}): wait for it to finish "
            f"(aws cloudformation describe-stack-events --stack-name {stack} shows its progress)"
        )
    if kind == "rollback_failed":
        return (
            f"stack {stack} is stuck in {status}{why}: run aws cloudformation "
            f"continue-update-rollback --stack-name {stack}, wait for UPDATE_ROLLBACK_COMPLETE, "
            "then deploy again"
        )
    what = (
        "made for a change set that was never executed"
        if status == "REVIEW_IN_PROGRESS"
        else "a delete that did not finish"
        if status == "DELETE_FAILED"
        else "a first create that failed"
    )
    return (
        f"stack {stack} is stuck in {status} ({what}{why}): it cannot be updated, only deleted. "
        f"Run enclave deploy --delete-failed-stack to delete it and deploy afresh (its retained "
        f"buckets are adopted), or aws cloudformation delete-stack --stack-name {stack}"
    )


def check(description: Mapping[str, Any]) -> None:
    """Raise :class:`StuckStack` unless deploy can update the stack described.

    :raises StuckStack: busy, a failed create, or a failed rollback.
    """
    status = str(description.get("StackStatus", ""))
    if kind_of(status) != "ready":
        raise StuckStack(
            str(description.get("StackName", "")),
            status,
            str(description.get("StackStatusReason") or ""),
        )


def delete_failed_stack(
    cloudformation: Any,
    stuck: StuckStack,
    *,
    progress: Callable[[str], None],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    describe: Callable[[Any, str], Mapping[str, Any] | None],
    timeout_s: float = DELETE_TIMEOUT_S,
) -> None:
    """Delete a stack in a failed-create state and wait until it is gone.

    :param describe: ``describe(cloudformation, stack)``, None once the stack is gone.

    :raises EnclaveError: the stack is not deletable, or the deletion failed or timed out.
    """
    if not stuck.deletable:
        raise stuck
    stack = stuck.stack
    progress(f"    deleting stack {stack} ({stuck.status}): it holds no working deployment")
    with aws_errors("CloudFormation", "DeleteStack", f"stack {stack}"):
        cloudformation.delete_stack(StackName=stack)
    deadline = clock() + timeout_s
    while True:
        description = describe(cloudformation, stack)
        status = "DELETE_COMPLETE" if description is None else str(description["StackStatus"])
        if status == "DELETE_COMPLETE":
            return
        if status == "DELETE_FAILED":
            reason = str(description.get("StackStatusReason") or "") if description else ""
            raise EnclaveError(
                f"deleting stack {stack} failed{': ' + reason if reason else ''}: see aws "
                f"cloudformation describe-stack-events --stack-name {stack}"
            )
        if clock() >= deadline:
            raise EnclaveError(f"stack {stack} was still {status} after {timeout_s:g} s")
        sleep(DELETE_POLL_S)
