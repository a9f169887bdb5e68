"""Plain helpers the tests share: import them, they are not fixtures.

- :data:`REPO_ROOT`: the repository's root folder, wherever the importing test file sits.
- :func:`backend_context`: the :class:`~enclave_core.plugin.interfaces.BackendContext` a backend
  gets, for tests.
- :func:`cli`: run ``enclave ARGS`` in-process and return (exit code, stdout, stderr).
- :func:`wait_for`: poll a check until it holds, fail at a deadline.
- :func:`alive`: whether a process exists and is not a zombie.
- :func:`until`: :func:`wait_for` for a coroutine, polling on the running loop.
- :class:`LoopThread`: an event loop in a thread, for servers the test talks to synchronously.

Shared fixtures are not here: they live in the ``conftest.py`` of the narrowest folder that covers
their users, where pytest finds them without an import.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from unittest import mock

import pytest
import uvloop

from enclave_core.testing.pytest_plugin import make_context

if TYPE_CHECKING:
    from cliff.command import Command

T = TypeVar("T")

#: The repository's root (``tests/`` is one level below it).
REPO_ROOT = Path(__file__).resolve().parent.parent


#: App ``hello`` in development (prefix ``dev``, us-east-1) with its folder, app and state in
#: ``base_dir`` (state in ``base_dir/.enclave``); keyword arguments replace any field. The same
#: context the contract suite's ``enclave_context_factory`` builds.
backend_context = make_context


def cli(
    capsys: pytest.CaptureFixture[str],
    *args: str,
    stdin: str | None = None,
    commands: Mapping[str, type[Command]] | None = None,
) -> tuple[int, str, str]:
    """Run ``enclave ARGS`` in-process; return (exit code, stdout, stderr).

    ``stdin``: the text the command reads from standard input (left alone when None).
    ``commands``: register only these commands (name to class) on a fresh ``EnclaveApp`` and run
    through it, without the entry points; argparse usage errors still give their exit code.
    """
    from enclave_core.cli.main import EnclaveApp, main

    def run() -> int:
        if commands is None:
            return main(list(args))
        app = EnclaveApp()
        for name, command in commands.items():
            app.command_manager.add_command(name, command)
        try:
            return int(app.run(list(args)) or 0)
        except SystemExit as exc:  # argparse usage errors
            return int(exc.code or 0)

    if stdin is None:
        code = run()
    else:
        with mock.patch("sys.stdin", io.StringIO(stdin)):
            code = run()
    out, err = capsys.readouterr()
    return code, out, err


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns a truthy value and return that value.

    An exception from ``check`` counts as "not yet"; at the deadline, fail with the last value or
    exception.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last failure
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class LoopThread:
    """An event loop (``"asyncio"`` or ``"uvloop"``) running in a daemon thread, as the runtime
    runs it; ``run`` executes a coroutine on it and waits for its result."""

    def __init__(self, kind: str = "asyncio") -> None:
        self.loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def until(
    check: Callable[[], bool], what: str = "the condition", timeout: float = 30.0
) -> None:
    """Poll ``check`` on the running loop until it holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def build_project_wheel(dest: Path) -> Path:
    """This checkout's simple-enclave wheel, built into ``dest`` (an unreleased framework, as
    ``enclave build --wheel`` takes it); returns its path."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dest), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return next(dest.glob("simple_enclave-*.whl"))
