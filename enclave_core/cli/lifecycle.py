"""`enclave status`, `enclave start`, `enclave stop` (through the supervisor) and `enclave logs`.

`start` and `stop` print one line saying what happened (``started: enclave … running (PCR0 …)``,
``stopped``, ``already running``, ``already stopped``); a failure is one ``ERROR:`` line with its
reason and exit status 1. `start` waits for the enclave to be ready, so that a runtime that cannot
boot is reported rather than left for `status` to find. With ``-f json|yaml|value`` both give the
supervisor's ``/health`` answer with ``outcome`` first (and ``pcr0`` for `start`). In `status`'s
table ``last_exit`` reads as its reason and its last log lines, rendered like `enclave dev` does.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from cliff.columns import FormattableColumn

from enclave_core.cli.common import EnclaveCommand, EnclaveShowOne, show_mapping
from enclave_core.config import Config
from enclave_core.errors import EnclaveError, StateConflict
from enclave_core.logview import parse_entry, printable, render_line, shorten

LOG_FILE = Path("logs") / "runtime.log"
FOLLOW_POLL_S = 0.2
_BLOCK = 64 * 1024
#: How long `enclave start` waits for the enclave to be ready, by default.
START_TIMEOUT_S = 120.0
#: How often `enclave start` asks the supervisor while it waits.
START_POLL_S = 0.5
#: How many of ``last_exit``'s log lines `enclave status` shows in its table.
STATUS_LOG_LINES = 5


def _client(config: Config) -> Any:
    # Imported lazily: the client belongs to the supervisor package.
    from enclave_core.cli.supervisor_client import SupervisorClient

    return SupervisorClient(config)


class LastExit(FormattableColumn[Any]):
    """``last_exit`` of ``/health``: in a table its reason and its last log lines, rendered
    readably; in JSON and YAML the whole object."""

    def human_readable(self) -> str:
        """The reason line, then the last :data:`STATUS_LOG_LINES` log lines."""
        value = self._value
        if not isinstance(value, Mapping):
            return str(value)
        tail = [str(line) for line in value.get("log_tail") or []][-STATUS_LOG_LINES:]
        return "\n".join([exit_reason(value), *(render_line(line) for line in tail)])


def exit_reason(last_exit: Mapping[str, Any]) -> str:
    """Why the enclave ended, in words: the reason, its exit code or signal, and when."""
    reason = str(last_exit.get("reason") or "") or "ended"
    how = []
    if last_exit.get("exit_code") is not None:
        how.append(f"exit code {last_exit['exit_code']}")
    if last_exit.get("signal"):
        how.append(f"signal {last_exit['signal']}")
    if last_exit.get("timestamp"):
        how.append(f"at {last_exit['timestamp']}")
    return printable(f"{reason} ({', '.join(how)})" if how else reason)


def status_view(health: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """``/health`` as ShowOne's columns and values, ``last_exit`` made readable in tables."""
    columns, values = show_mapping(health)
    shown = tuple(
        LastExit(health[name]) if name == "last_exit" and health[name] else value
        for name, value in zip(columns, values, strict=True)
    )
    return columns, shown


class Status(EnclaveShowOne):
    """Show the supervisor's view of the enclave (its `/health`).

    In the table, ``last_exit`` shows why the enclave last ended and its last log lines; with
    ``-f json`` the whole document. With --cloud: the deployed stack instead (its status and
    outputs, its instances, and each supervisor's /health fetched over SSM Run Command); needs
    AWS credentials.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """Add ``--cloud``."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--cloud", action="store_true", help="the deployed stack on AWS, not this machine"
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        """Ask the supervisor for its health document (or, with --cloud, AWS)."""
        if parsed_args.cloud:
            from enclave_core.cli.deploy import cloud_status_of  # boto3 work: only when asked

            return show_mapping(cloud_status_of(self, self.load(parsed_args)))
        config = self.load(parsed_args, allow_missing=True)
        return status_view(_client(config).health())


class OutcomeCommand(EnclaveShowOne):
    """A command whose table output is one line saying what happened.

    ``take_action`` returns the structured answer with ``outcome`` first; ``-f json``, ``yaml``
    or ``value`` (or ``--column``) show it as any ShowOne does.
    """

    def produce_output(
        self, parsed_args: argparse.Namespace, column_names: Sequence[str], data: Sequence[Any]
    ) -> int:
        """Print :meth:`outcome_line` for the default table; otherwise the structured answer."""
        if parsed_args.formatter == "table" and not parsed_args.columns:
            self.write(self.outcome_line(dict(zip(column_names, data, strict=True))))
            return 0
        result: int = super().produce_output(parsed_args, column_names, data)
        return result

    def outcome_line(self, answer: Mapping[str, Any]) -> str:
        """The one line for ``answer`` (the structured answer); the outcome by default."""
        return str(answer.get("outcome", ""))


class Start(OutcomeCommand):
    """Start the enclave (and resume the watchdog) through the supervisor.

    Waits until the enclave is ready and prints ``started: enclave ID running (PCR0 …)``, or
    ``already running``. When the launcher or the runtime fails, or the enclave is not ready in
    time, prints the reason in one ``ERROR:`` line and exits 1.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """Add ``--timeout``."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--timeout",
            type=float,
            default=START_TIMEOUT_S,
            metavar="SECONDS",
            help=f"how long to wait for the enclave to be ready (default: {START_TIMEOUT_S:g}; "
            "0: do not wait)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        """POST /v1/start (a 409 means it is already running), then wait for it to be ready."""
        if parsed_args.timeout < 0:
            raise EnclaveError("--timeout must be 0 or more")
        client = _client(self.load(parsed_args, allow_missing=True))
        try:
            answer = client.start()
        except StateConflict:
            return show_mapping({"outcome": "already running", **client.health()})
        except EnclaveError:
            reason = _launch_error(client)
            if reason is None:
                raise
            raise EnclaveError(f"enclave failed to start: {reason}") from None
        if parsed_args.timeout == 0:
            return show_mapping({"outcome": "starting", **answer})
        health = wait_until_started(client, answer, parsed_args.timeout)
        return show_mapping({"outcome": "started", **health, "pcr0": _pcr0(client)})

    def outcome_line(self, answer: Mapping[str, Any]) -> str:
        """``started: enclave ID running (PCR0 …)``, ``starting: enclave ID`` or
        ``already running``."""
        outcome = str(answer["outcome"])
        enclave = f"enclave {answer['enclave_id']}" if answer.get("enclave_id") else "enclave"
        if outcome == "started":
            pcr0 = f" (PCR0 {shorten(str(answer['pcr0']))})" if answer.get("pcr0") else ""
            return f"started: {enclave} running{pcr0}"
        if outcome == "starting":
            return f"starting: {enclave}"
        return outcome


class Stop(OutcomeCommand):
    """Stop the enclave (and suspend the watchdog) through the supervisor.

    Prints ``stopped``, or ``already stopped``.
    """

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        """POST /v1/stop; a 409 means it is already stopped."""
        client = _client(self.load(parsed_args, allow_missing=True))
        try:
            answer = client.stop()
        except StateConflict:
            return show_mapping({"outcome": "already stopped", **client.health()})
        return show_mapping({"outcome": "stopped", **answer})


def wait_until_started(
    client: Any,
    answer: Mapping[str, Any],
    timeout_s: float,
    *,
    poll_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll ``/health`` from the start's ``answer`` until the enclave runs; its last answer.

    EnclaveError with the reason when the launcher or the runtime fails, the enclave ends or is
    stopped meanwhile, or it is not running after ``timeout_s``.
    """
    poll = START_POLL_S if poll_s is None else poll_s
    deadline = clock() + timeout_s
    health = dict(answer)
    while True:
        failure = start_failure(health, answer.get("last_exit"))
        if failure is not None:
            raise EnclaveError(f"enclave failed to start: {failure}")
        if health.get("status") == "running":
            return health
        if clock() >= deadline:
            raise EnclaveError(f"enclave not running after {timeout_s:g} s: {_progress(health)}")
        sleep(poll)
        health = client.health()


def start_failure(health: Mapping[str, Any], exit_before: Any) -> str | None:
    """Why a start failed, as ``/health`` shows it, or None while it may still succeed.

    :param exit_before: ``last_exit`` when the start was answered: a different one means the new
        enclave ended (the watchdog restarts it, but this start failed).
    """
    status = health.get("status")
    if status == "error":
        if health.get("error"):
            return str(health["error"])
        runtime = health.get("runtime")
        if isinstance(runtime, Mapping) and runtime.get("status"):
            detail = f": {runtime['detail']}" if runtime.get("detail") else ""
            return f"runtime {runtime['status']}{detail}"
        return "the supervisor reports an error"
    if status == "stopped":
        return "the enclave was stopped meanwhile"
    last_exit = health.get("last_exit")
    if isinstance(last_exit, Mapping) and last_exit != exit_before:
        last_error = _last_error(last_exit.get("log_tail") or [])
        return exit_reason(last_exit) + (f"; last error: {last_error}" if last_error else "")
    return None


def _launch_error(client: Any) -> str | None:
    """The launcher's error the supervisor reports after a failed start, if that is why."""
    try:
        error = client.health().get("error")
    except EnclaveError:
        return None
    return str(error) if error else None


def _pcr0(client: Any) -> str | None:
    """The running enclave's PCR0 from its enclave-info, or None when it cannot be read."""
    try:
        pcr0 = client.enclave_info().get("pcr0")
    except EnclaveError:
        return None
    return str(pcr0) if pcr0 else None


def _progress(health: Mapping[str, Any]) -> str:
    """Where a start stands: the status and the runtime's last answer."""
    runtime = health.get("runtime")
    text = f"status {health.get('status')}"
    if isinstance(runtime, Mapping) and runtime.get("status"):
        detail = f" ({runtime['detail']})" if runtime.get("detail") else ""
        text += f", runtime {runtime['status']}{detail}"
    return text


def _last_error(log_tail: Sequence[Any]) -> str | None:
    """The message (and error) of the last ERROR or CRITICAL JSON line of ``log_tail``."""
    for line in reversed(log_tail):
        entry = parse_entry(str(line))
        if entry is None or str(entry.get("level", "")).upper() not in ("ERROR", "CRITICAL"):
            continue
        error = entry.get("error")
        text = f"{entry.get('msg', '')}: {error}" if error else str(entry.get("msg", ""))
        return printable(text)
    return None


def tail_lines(path: Path, count: int) -> tuple[list[bytes], int]:
    """Return the last ``count`` complete lines of ``path`` and the offset just after them."""
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        # A partial last line (being written) is left for --follow to print once complete.
        data = b""
        position = end
        while position > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
        complete_end = data.rfind(b"\n") + 1
        lines = [line + b"\n" for line in data[:complete_end].split(b"\n")[:-1]]
        if position > 0:
            lines = lines[1:]  # the first one was cut by the block boundary
        return (lines[-count:] if count > 0 else []), position + complete_end


def follow(
    path: Path,
    offset: int,
    emit: Callable[[bytes], None],
    *,
    poll_s: float = FOLLOW_POLL_S,
    keep_going: Callable[[], bool] = lambda: True,
) -> None:
    """Print lines appended to ``path`` from ``offset`` on, surviving truncation and rotation."""
    handle: BinaryIO | None = None
    inode = -1
    pending = b""
    try:
        while keep_going():
            if handle is None:
                try:
                    handle = path.open("rb")
                except FileNotFoundError:
                    time.sleep(poll_s)
                    continue
                stat = os.fstat(handle.fileno())
                inode = stat.st_ino
                handle.seek(offset if offset <= stat.st_size else 0)
                offset = 0  # a reopened (rotated) file is read from its start
            chunk = handle.read(_BLOCK)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    emit(line + b"\n")
                continue
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and current.st_ino != inode:
                # Rotated: the old file is drained; continue with the new one from its start.
                handle.close()
                handle, pending = None, b""
                continue
            if current is not None and current.st_size < handle.tell():
                handle.seek(0)  # truncated in place
                pending = b""
                continue
            time.sleep(poll_s)
    finally:
        if handle is not None:
            handle.close()


class Logs(EnclaveCommand):
    """Print the runtime's and the app's log lines (`.enclave/logs/runtime.log`).

    The ``process`` launcher writes that file in development; on a Nitro host the supervisor's
    log channel (:mod:`enclave_core.streams.logchannel`) writes it, debug mode or not. ``--follow``
    survives the channel's rotation to ``runtime.log.1``.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """Add ``--follow`` and ``--lines``."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--follow", action="store_true", help="keep printing new lines until Ctrl-C"
        )
        parser.add_argument(
            "--lines",
            type=int,
            default=100,
            metavar="N",
            help="how many of the last lines to print first (default: 100)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Print the last N lines, then follow the file if asked."""
        config = self.load(parsed_args, allow_missing=True)
        path = config.state_dir / LOG_FILE
        if parsed_args.lines < 0:
            raise EnclaveError("--lines must be 0 or more")
        if not path.is_file():
            raise EnclaveError(f"no logs yet at {path}: has the enclave run?")
        lines, offset = tail_lines(path, parsed_args.lines)
        for line in lines:
            self._emit(line)
        if parsed_args.follow:
            try:
                follow(path, offset, self._emit)
            except KeyboardInterrupt:
                pass
        return 0

    def _emit(self, line: bytes) -> None:
        self.app.stdout.write(line.decode("utf-8", errors="replace"))
        self.app.stdout.flush()
