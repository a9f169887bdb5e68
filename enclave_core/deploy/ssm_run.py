"""Talking to the supervisor on a deployed host: SSM Run Command and the scripts it runs there.

The management API listens on the host's loopback only, so ``enclave deploy``, ``destroy`` and
``status --cloud`` send ``AWS-RunShellScript`` commands (POSIX ``sh``, every value
``shlex.quote``-d) and poll them. The supervisor's token is read on the host and never leaves it;
paths come from the systemd unit (docs/architecture.md, "Building and deploying").
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from enclave_core.aws.clients import error_code, map_client_error
from enclave_core.config import STATE_DIRNAME, Config
from enclave_core.errors import EnclaveError

DOCUMENT = "AWS-RunShellScript"
UNIT = "enclave-supervisor"
POLL_S = 3.0
#: How long a new instance may take to register with SSM (boot, then the SSM agent).
READY_TIMEOUT_S = 600.0
READY_RETRY_S = 10.0
#: How long the start script waits for a new host's first boot to install the supervisor.
FIRST_BOOT_WAIT_S = 1200
#: The first boot's log (written by the CDK app's user data).
INIT_LOG = "/var/log/simple-enclave-init.log"
TERMINAL = frozenset({"Success", "Failed", "Cancelled", "TimedOut"})


@dataclass(frozen=True)
class Invocation:
    """One instance's result of a Run Command."""

    instance_id: str
    status: str
    response_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether the script ran and exited 0."""
        return self.status == "Success" and self.response_code == 0


class RunCommand:
    """Runs shell scripts on instances through SSM and waits for their results.

    :param ssm: a boto3 SSM client (injected: tests use botocore's Stubber).
    :param sleep: and ``clock``: injected so tests do not wait.
    """

    def __init__(
        self,
        ssm: Any,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = POLL_S,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.ssm = ssm
        self.sleep = sleep
        self.clock = clock
        self.poll_s = poll_s
        self.ready_timeout_s = ready_timeout_s

    def run(
        self, instance_ids: Sequence[str], commands: list[str], *, comment: str, timeout_s: float
    ) -> list[Invocation]:
        """Run ``commands`` on every instance; return each one's result, in the order given.

        :raises EnclaveError: SSM refused the command, or it did not end within ``timeout_s``
            (plus a minute for delivery).
        """
        command_id = self._send(list(instance_ids), commands, comment, timeout_s)
        pending = list(instance_ids)
        results: dict[str, Invocation] = {}
        deadline = self.clock() + timeout_s + 60
        while pending:
            for instance_id in list(pending):
                found = self._invocation(command_id, instance_id)
                if found is not None and found.status in TERMINAL:
                    results[instance_id] = found
                    pending.remove(instance_id)
            if not pending:
                break
            if self.clock() >= deadline:
                raise EnclaveError(
                    f"SSM Run Command {command_id} ({comment}) did not finish on "
                    f"{', '.join(pending)} within {timeout_s + 60:g} s"
                )
            self.sleep(self.poll_s)
        return [results[i] for i in instance_ids]

    def _send(self, ids: list[str], commands: list[str], comment: str, timeout_s: float) -> str:
        deadline = self.clock() + self.ready_timeout_s
        while True:
            try:
                answer = self.ssm.send_command(
                    InstanceIds=ids,
                    DocumentName=DOCUMENT,
                    Comment=comment[:100],
                    Parameters={"commands": commands, "executionTimeout": [str(int(timeout_s))]},
                )
                return str(answer["Command"]["CommandId"])
            except ClientError as exc:
                # A new instance is "invalid" until its SSM agent has registered.
                if error_code(exc) != "InvalidInstanceId" or self.clock() >= deadline:
                    raise map_client_error(
                        exc, service="SSM", operation="SendCommand", resource=", ".join(ids)
                    ) from None
            except BotoCoreError as exc:
                raise map_client_error(
                    exc, service="SSM", operation="SendCommand", resource=", ".join(ids)
                ) from None
            self.sleep(READY_RETRY_S)

    def _invocation(self, command_id: str, instance_id: str) -> Invocation | None:
        try:
            answer = self.ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ClientError as exc:
            if error_code(exc) == "InvocationDoesNotExist":
                return None  # not delivered yet
            raise map_client_error(
                exc,
                service="SSM",
                operation="GetCommandInvocation",
                resource=f"command {command_id} on {instance_id}",
            ) from None
        return Invocation(
            instance_id=instance_id,
            status=str(answer.get("Status", "")),
            response_code=int(answer.get("ResponseCode", -1)),
            stdout=str(answer.get("StandardOutputContent", "")),
            stderr=str(answer.get("StandardErrorContent", "")),
        )


def supervisor_url(config: Config) -> str:
    """The management API's base URL as seen on the host itself."""
    host, _, port = config.supervisor.listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):  # noqa: S104 - a listen address, read not bound
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def _locate(*, wait_s: int = 0) -> list[str]:
    """Lines that set ``$workdir`` (the folder of the host's enclave.yaml) and ``$token``.

    ``wait_s``: how long to wait for the unit, which a new host's first boot installs last.
    """
    tries = max(wait_s // 10, 0)
    return [
        f"unit={UNIT}",
        "i=0",
        'until workdir=$(systemctl show -p WorkingDirectory --value "$unit" 2>/dev/null) '
        '&& [ -n "$workdir" ]; do',
        f'  i=$((i + 1)); if [ "$i" -gt {tries} ]; then echo "$unit is not installed: is the '
        f'instance still in its first boot? see {INIT_LOG}" >&2; exit 3; fi; sleep 10',
        "done",
        f'token="$workdir/{STATE_DIRNAME}/supervisor/token"',
    ]


def start_script(config: Config, *, bucket: str, key: str) -> list[str]:
    """Fetch the EIF from S3 to ``enclave.eif``, make sure the supervisor runs, POST /v1/start.

    Exits 0 when the enclave starts or already runs (409), non-zero with a reason otherwise.
    """
    url = shlex.quote(supervisor_url(config))
    source = shlex.quote(f"s3://{bucket}/{key}")
    return [
        "set -eu",
        *_locate(wait_s=FIRST_BOOT_WAIT_S),
        f"eif={shlex.quote(config.enclave.eif)}",
        'case "$eif" in /*) ;; *) eif="$workdir/$eif" ;; esac',
        'mkdir -p "$(dirname "$eif")"',
        f'aws s3 cp --only-show-errors --region {shlex.quote(config.region)} {source} "$eif.new"',
        'mv -f "$eif.new" "$eif"',
        'echo "fetched $eif"',
        'systemctl is-active --quiet "$unit" || systemctl restart "$unit"',
        # The supervisor writes its token when it starts: wait for it and for the API.
        "i=0",
        f'until [ -s "$token" ] && curl -s -o /dev/null -m 5 {url}/health; do',
        '  i=$((i + 1)); if [ "$i" -ge 60 ]; then echo "the supervisor did not answer" >&2; '
        "exit 4; fi; sleep 2",
        "done",
        'code=$(curl -s -o /dev/null -m 60 -w "%{http_code}" -X POST '
        f'-H "Authorization: Bearer $(cat "$token")" {url}/v1/start || true)',
        'case "$code" in',
        '  200|202) echo "enclave starting (HTTP $code)" ;;',
        '  409) echo "enclave already running" ;;',
        f'  *) echo "POST {supervisor_url(config)}/v1/start answered HTTP $code" >&2; exit 1 ;;',
        "esac",
    ]


def stop_script(config: Config) -> list[str]:
    """POST /v1/stop; always exits 0 (destroy goes on), saying what happened."""
    url = shlex.quote(supervisor_url(config))
    return [
        *_locate(),
        'code=$(curl -s -o /dev/null -m 60 -w "%{http_code}" -X POST '
        f'-H "Authorization: Bearer $(cat "$token" 2>/dev/null)" {url}/v1/stop || true)',
        'case "$code" in',
        '  200|202) echo "enclave stopped" ;;',
        '  409) echo "enclave already stopped" ;;',
        '  *) echo "POST /v1/stop answered HTTP $code: the enclave goes with the instance" ;;',
        "esac",
    ]


def health_script(config: Config) -> list[str]:
    """Print the supervisor's ``/health`` body (nothing when it does not answer)."""
    return [f"curl -s -m 10 {shlex.quote(supervisor_url(config))}/health || true"]
