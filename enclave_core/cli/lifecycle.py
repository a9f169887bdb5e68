"""`enclave status`, `enclave start`, `enclave stop` (through the supervisor) and `enclave logs`."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from enclave_core.cli.common import EnclaveCommand, EnclaveShowOne, show_mapping
from enclave_core.config import Config
from enclave_core.errors import EnclaveError, StateConflict

LOG_FILE = Path("logs") / "runtime.log"
FOLLOW_POLL_S = 0.2
_BLOCK = 64 * 1024


def _client(config: Config) -> Any:
    # Imported lazily: the client belongs to the supervisor package.
    from enclave_core.supervisor.client import SupervisorClient

    return SupervisorClient(config)


class Status(EnclaveShowOne):
    """Show the supervisor's view of the enclave (its `/health`).

    With --cloud: the deployed stack instead (its status and outputs, its instances, and each
    supervisor's /health fetched over SSM Run Command); needs AWS credentials.
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
        return show_mapping(_client(config).health())


class Start(EnclaveShowOne):
    """Start the enclave (and resume the watchdog) through the supervisor."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        """POST /v1/start; a 409 means it is already running."""
        config = self.load(parsed_args, allow_missing=True)
        try:
            result = _client(config).start()
        except StateConflict:
            raise StateConflict("enclave is already running") from None
        return show_mapping(result or {"status": "starting"})


class Stop(EnclaveShowOne):
    """Stop the enclave (and suspend the watchdog) through the supervisor."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        """POST /v1/stop; a 409 means it is already stopped."""
        config = self.load(parsed_args, allow_missing=True)
        try:
            result = _client(config).stop()
        except StateConflict:
            raise StateConflict("enclave is already stopped") from None
        return show_mapping(result or {"status": "stopped"})


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
    log channel (:mod:`enclave_core.logchannel`) writes it, debug mode or not. ``--follow``
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
