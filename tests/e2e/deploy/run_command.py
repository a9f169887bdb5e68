"""TEST-ONLY: SSM Run Command in the patched moto server: ``AWS-RunShellScript`` really runs.

moto 5.2.6's ``SendCommand`` records the command and reports every invocation ``Success`` at
once with empty output; nothing runs. Here, for ``AWS-RunShellScript``:

- ``SendCommand`` refuses instances that are not running (``InvalidInstanceId``, as SSM answers
  for an instance whose agent is not registered), then runs ``commands`` (joined by newlines,
  the way the agent writes its ``_script.sh``) with ``sh -c`` on each target's fake host
  (:class:`~tests.e2e.deploy.hosts.Host`): in its own session, in the host's environment, cwd
  the agent's orchestration folder, bounded by the ``executionTimeout`` parameter;
- ``GetCommandInvocation`` answers ``InProgress`` (``ResponseCode`` -1) until the script ends,
  then ``Success`` (exit 0) or ``Failed`` with the exit status, or ``TimedOut`` (the process group
  is killed), with ``StandardOutputContent`` and ``StandardErrorContent`` cut at SSM's 24,000 and
  8,000 characters.

Other documents keep moto's behaviour. Every script and its output are kept in the host's
``var/log/ssm/`` for the test's failure messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moto.core.exceptions import ServiceException
from moto.ec2.models import ec2_backends
from moto.ssm.models import SimpleSystemManagerBackend

from tests.e2e.deploy.hosts import Host, Settings

DOCUMENT = "AWS-RunShellScript"
#: What GetCommandInvocation returns of a script's output (the rest is only in S3 output).
STDOUT_LIMIT = 24000
STDERR_LIMIT = 8000
DEFAULT_TIMEOUT_S = 3600


class InvalidInstanceId(ServiceException):
    """SSM's answer for a target that is not a managed, running instance."""

    code = "InvalidInstanceId"

    def __init__(self, instance_ids: list[str], account_id: str) -> None:
        listed = ", ".join(instance_ids)
        super().__init__(
            self.code, f"Instances [[{listed}]] not in a valid state for account {account_id}"
        )


def install(hosts: Path) -> None:
    """Replace moto's ``send_command`` with one that runs shell scripts on ``hosts``."""
    original = SimpleSystemManagerBackend.send_command

    def send_command(self: SimpleSystemManagerBackend, **kwargs: Any) -> Any:
        if kwargs.get("document_name") != DOCUMENT:
            return original(self, **kwargs)
        ids = list(kwargs.get("instance_ids") or [])
        _check_targets(self.account_id, self.region_name, ids)
        command = original(self, **kwargs)
        parameters = kwargs.get("parameters") or {}
        script = "\n".join(parameters.get("commands") or [])
        timeout = int((parameters.get("executionTimeout") or [DEFAULT_TIMEOUT_S])[0])
        command.status = "InProgress"
        for invocation in command.invocations:
            invocation.update(Status="InProgress", StatusDetails="InProgress", ResponseCode=-1)
            runner = _Invocation(hosts, command, invocation, script, timeout)
            threading.Thread(target=runner.run, daemon=True).start()
        return command

    SimpleSystemManagerBackend.send_command = send_command  # type: ignore[method-assign]


def _check_targets(account_id: str, region: str, ids: list[str]) -> None:
    ec2 = ec2_backends[account_id][region]
    running = {i.id for i in ec2.all_instances() if i.state == "running"}
    invalid = [i for i in ids if i not in running]
    if invalid:
        raise InvalidInstanceId(invalid, account_id)


class _Invocation:
    """One instance's run of one command; fills moto's invocation document when it ends."""

    def __init__(
        self, hosts: Path, command: Any, invocation: dict[str, Any], script: str, timeout: int
    ) -> None:
        self.hosts = hosts
        self.command = command
        self.invocation = invocation
        self.script = script
        self.timeout = timeout
        self.host = Host.of(hosts, invocation["InstanceId"])

    def run(self) -> None:
        settings = Settings.read(self.hosts)
        try:
            if settings is None:
                raise RuntimeError("the test wrote no hosts.json: no host to run on")
            status, code, out, err = self._execute(settings)
        except Exception as exc:  # a thread: the caller must see it in the invocation
            status, code, out, err = "Failed", -1, "", f"run command fake: {exc!r}"
        self.invocation.update(
            Status=status,
            StatusDetails="ExecutionTimedOut" if status == "TimedOut" else status,
            ResponseCode=code,
            StandardOutputContent=out[:STDOUT_LIMIT],
            StandardErrorContent=err[:STDERR_LIMIT],
            ExecutionEndDateTime=datetime.now(UTC).isoformat(),
        )
        if all(i["Status"] not in ("InProgress", "Pending") for i in self.command.invocations):
            failed = any(i["Status"] != "Success" for i in self.command.invocations)
            self.command.status = "Failed" if failed else "Success"

    def _execute(self, settings: Settings) -> tuple[str, int, str, str]:
        command_id = self.command.command_id
        workdir = (
            self.host.root
            / "var/lib/amazon/ssm"
            / self.host.instance_id
            / "document/orchestration"
            / command_id
            / "awsrunShellScript/0.awsrunShellScript"
        )
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "_script.sh").write_text(self.script + "\n", encoding="utf-8")
        process = subprocess.Popen(  # noqa: S603 - the command's own script, on the fake host
            ["sh", "-c", self.script],
            cwd=workdir,
            env=self.host.env(settings),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=self.timeout)
            status = "Success" if process.returncode == 0 else "Failed"
            code = process.returncode
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass
            out, err = process.communicate()
            status, code = "TimedOut", -1
        self._log(command_id, status, code, out, err)
        return status, code, out, err

    def _log(self, command_id: str, status: str, code: int, out: str, err: str) -> None:
        log = self.host.root / "var" / "log" / "ssm" / f"{command_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(
            f"# {self.command.comment}\n{self.script}\n# => {status} ({code})\n"
            f"# stdout:\n{out}\n# stderr:\n{err}\n",
            encoding="utf-8",
        )
