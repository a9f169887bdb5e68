"""Running the external tools of ``enclave build`` and ``enclave deploy``: docker, nitro-cli, cdk.

Argument lists only, never a shell. A missing tool is one line naming it and how to get it. A
long-running tool's output is streamed line by line (the user sees docker's and cdk's progress)
and its last lines are kept for the error message when it fails. Every run has a timeout; on
timeout (or Ctrl-C) the tool's whole process group is killed, so npx's node children or docker's
helpers do not linger.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from enclave_core.errors import EnclaveError

#: How many of a failed tool's last output lines an error message quotes.
TAIL_LINES = 15

Which = Callable[[str], "str | None"]


@dataclass(frozen=True)
class ToolResult:
    """A finished tool: its exit status, stdout (when captured) and its last output lines."""

    returncode: int
    stdout: str
    tail: list[str]


def require_tool(name: str, *, needed_by: str, hint: str, which: Which = shutil.which) -> str:
    """The absolute path of ``name`` on PATH; else one clear error naming what is missing.

    :raises EnclaveError: ``"<needed_by> needs <name>: not found on PATH (<hint>)"``.
    """
    found = which(name)
    if not found:
        raise EnclaveError(f"{needed_by} needs {name}: not found on PATH ({hint})")
    return found


def display(argv: Sequence[str]) -> str:
    """``argv`` as one readable line, the tool by its name rather than its full path."""
    first = Path(argv[0]).name if argv else ""
    return " ".join([first, *argv[1:]])


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def stream(
    argv: Sequence[str],
    *,
    timeout_s: float,
    echo: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    tail: int = TAIL_LINES,
) -> ToolResult:
    """Run ``argv``, passing each line of its output (stdout and stderr merged) to ``echo``.

    :raises EnclaveError: the tool could not start, or ran longer than ``timeout_s``.
    """
    try:
        proc = subprocess.Popen(  # noqa: S603 - argument list, no shell
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,  # its own group: a timeout kills its children too
        )
    except OSError as exc:
        raise EnclaveError(f"{display(argv)} could not start: {exc.strerror or exc}") from None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _kill_group(proc)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    last: deque[str] = deque(maxlen=tail)
    assert proc.stdout is not None
    try:
        with proc.stdout:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                last.append(line)
                echo(line)
        returncode = proc.wait()
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        timer.cancel()
    if expired.is_set():
        raise EnclaveError(f"{display(argv)} timed out after {timeout_s:g} s")
    return ToolResult(returncode, "", list(last))


def run(
    argv: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    tail: int = TAIL_LINES,
) -> ToolResult:
    """Run ``argv`` and capture its stdout (for JSON answers); ``tail`` holds stderr's last lines.

    :raises EnclaveError: the tool could not start, or ran longer than ``timeout_s``.
    """
    try:
        done = subprocess.run(  # noqa: S603 - argument list, no shell
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=dict(env) if env is not None else None,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise EnclaveError(f"{display(argv)} timed out after {timeout_s:g} s") from None
    except OSError as exc:
        raise EnclaveError(f"{display(argv)} could not start: {exc.strerror or exc}") from None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return ToolResult(done.returncode, done.stdout, lines[-tail:])


class ToolFailed(EnclaveError):
    """A tool exited non-zero; ``details`` holds its last output lines (the CLI prints them)."""

    def __init__(self, message: str, details: Sequence[str]) -> None:
        super().__init__(message)
        self.details = list(details)


def failure(what: str, result: ToolResult, *, hint: str = "") -> ToolFailed:
    """The error for a tool that exited non-zero: one line, then its last output lines."""
    lines = [line for line in result.tail if line.strip()] or ["(no output)"]
    extra = f" ({hint})" if hint else ""
    return ToolFailed(
        f"{what} failed with exit status {result.returncode}{extra}; its last lines:", lines
    )
