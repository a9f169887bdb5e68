"""The app as the runtime's supervised child process.

The app runs ``app.command`` in ``app.dir`` with its secrets in the environment. It stays in the
runtime's process group and gets ``PR_SET_PDEATHSIG=SIGKILL``, so it dies with the runtime even
after a ``kill -9``. Its output lines are re-logged as JSON with ``source="app"``. When it exits it
is restarted with backoff (0.5 s doubling to 10 s) while ``/health`` reports degraded; after five
failed starts in a row the runtime exits with code 3 so the watchdog restarts the whole enclave.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from loguru import logger

from enclave_core.config import Config
from enclave_core.runtime.childio import die_with_parent, probe, relay_lines
from enclave_core.runtime.state import RuntimeState
from enclave_core.streams.host_bridges import proxy_environment

EXIT_APP_FAILED = 3
EnvProvider = Callable[[], Awaitable[dict[str, str]]]


def app_environment(config: Config, state: RuntimeState, secrets: dict[str, str]) -> dict[str, str]:
    """The app's environment: ours minus ENCLAVE_*, then egress, app.env, secrets, the runtime's.

    The egress variables (``HTTPS_PROXY``, ``NO_PROXY``, ``AWS_EC2_METADATA_SERVICE_ENDPOINT``,
    see :mod:`enclave_core.streams.host_bridges`) come before ``app.env``, which may override them.
    The runtime's own come last: ``PORT`` (and ``ENCLAVE_APP_PORT``), ``ENCLAVE_API_URL``,
    ``ENCLAVE_MGMT_TOKEN`` and ``ENCLAVE_CPU_COUNT`` (``enclave.cpu_count``, so a server such as
    gunicorn sizes its workers to the enclave rather than to whatever ``os.cpu_count()`` sees).
    """
    assert state.mgmt_token is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update(proxy_environment(config))
    env.update(config.app.env)
    env.update(secrets)
    port = str(config.app.port)
    env.update(
        {
            "ENCLAVE_APP_PORT": port,
            "PORT": port,
            "ENCLAVE_MGMT_TOKEN": state.mgmt_token,
            "ENCLAVE_API_URL": f"http://127.0.0.1:{config.runtime.app_api_port}",
            "ENCLAVE_CPU_COUNT": str(config.enclave.cpu_count),
        }
    )
    return env


def describe_exit(code: int | None) -> str:
    """``app exited with code N`` or ``app was killed by signal SIGX``."""
    if code is None:
        return "app could not be started"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"app was killed by signal {name}"
    return f"app exited with code {code}"


def _executable(command: list[str], app_dir: Path, env: dict[str, str]) -> list[str]:
    first = command[0]
    if "/" in first:
        path = Path(first) if Path(first).is_absolute() else app_dir / first
        return [str(path), *command[1:]]
    found = shutil.which(first, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(f"app command {first!r} not found on PATH")
    return [found, *command[1:]]


class AppSupervisor:
    """Starts the app, waits until it is ready, restarts it with backoff, stops it on shutdown."""

    def __init__(
        self,
        config: Config,
        state: RuntimeState,
        env_provider: EnvProvider,
        *,
        ready_timeout_s: float = 30.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        max_failures: int = 5,
        stable_after_s: float = 10.0,
        stop_grace_s: float = 10.0,
        poll_interval_s: float = 0.1,
        health_interval_s: float = 2.0,
        on_first_ready: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """:param on_first_ready: awaited the first time the app answers, before ``/health`` says
        ready (so whoever waits for readiness sees its effects)."""
        self._config = config
        self._state = state
        self._env_provider = env_provider
        self.ready_timeout_s = ready_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_failures = max_failures
        self.stable_after_s = stable_after_s
        self.stop_grace_s = stop_grace_s
        self.poll_interval_s = poll_interval_s
        self.health_interval_s = health_interval_s
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[int] | None = None
        self._stopping = asyncio.Event()
        #: Set when the app failed ``max_failures`` times in a row (the runtime must exit 3).
        self.failed = asyncio.Event()
        self.starts = 0
        self._on_first_ready = on_first_ready
        self._first_ready_done = False

    @property
    def pid(self) -> int | None:
        """The running app's pid, if any."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def start(self) -> None:
        """Start supervising in the background (returns at once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="app-supervisor")

    async def wait(self) -> int:
        """Wait for supervision to end; return 3 after repeated failures, else 0."""
        return await self._task if self._task is not None else 0

    async def stop(self) -> None:
        """SIGTERM the app, SIGKILL it after the grace period, and end supervision."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            await self._terminate(proc)
            logger.bind(pid=proc.pid, exit_code=proc.returncode).info("app stopped")
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.stop_grace_s)
        except TimeoutError:
            logger.bind(pid=proc.pid).warning("app ignored SIGTERM; killing it")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _spawn(self) -> asyncio.subprocess.Process:
        secrets = await self._env_provider()
        env = app_environment(self._config, self._state, secrets)
        app_dir = self._config.app_dir
        argv = _executable(self._config.app.command, app_dir, env)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(app_dir),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent(os.getpid()),
        )
        self.starts += 1
        logger.bind(pid=proc.pid, command=self._config.app.command[0]).info("app started")
        return proc

    async def _run(self) -> int:
        failures = 0
        while not self._stopping.is_set():
            ready_at, code, what = await self._run_once()
            self._state.app_up = False
            if self._stopping.is_set():
                break
            failed = ready_at is None or time.monotonic() - ready_at < self.stable_after_s
            failures = failures + 1 if failed else 0
            if failures >= self.max_failures:
                self._state.app_problem = (
                    f"{what}; it failed {failures} times in a row, the runtime exits"
                )
                self._state.exit_code = EXIT_APP_FAILED
                logger.bind(failures=failures, exit_code=code).error(
                    "app failed repeatedly; runtime exits"
                )
                self.failed.set()
                return EXIT_APP_FAILED
            delay = min(self.backoff_initial_s * 2 ** max(failures - 1, 0), self.backoff_max_s)
            self._state.app_problem = f"{what}; restarting in {delay:g}s"
            logger.bind(exit_code=code, failures=failures, delay_s=delay).warning("app exited")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        return 0

    async def _run_once(self) -> tuple[float | None, int | None, str]:
        """Start the app once and watch it.

        :returns: when it became ready (monotonic time, or None), its exit code and what happened.
        """
        try:
            proc = await self._spawn()
        except (OSError, ValueError) as exc:
            logger.bind(error=str(exc)).error("app could not be started")
            return None, None, f"app could not be started: {exc}"
        self._proc = proc
        relays = [
            asyncio.create_task(relay_lines(proc.stdout, "stdout")),
            asyncio.create_task(relay_lines(proc.stderr, "stderr")),
        ]
        exited = asyncio.create_task(proc.wait())
        ready_at: float | None = None
        what: str | None = None
        try:
            if self._stopping.is_set():  # stop() raced with the spawn
                await self._terminate(proc)
            elif not await self._until_ready(exited):
                if not exited.done() and not self._stopping.is_set():  # timed out
                    what = (
                        f"app did not become ready on port {self._config.app.port} "
                        f"within {self.ready_timeout_s:g}s"
                    )
                    logger.bind(port=self._config.app.port).error("app never became ready")
                    await self._terminate(proc)
            else:
                if self._on_first_ready is not None and not self._first_ready_done:
                    self._first_ready_done = True
                    await self._on_first_ready()
                ready_at = time.monotonic()
                self._state.app_up = True
                self._state.app_problem = None
                logger.bind(pid=proc.pid, port=self._config.app.port).info("app ready")
                await self._watch(exited)
            await exited
        finally:
            exited.cancel()
            # A grandchild may still hold the pipes: give the relays a moment, then drop them.
            _done, pending = await asyncio.wait(relays, timeout=1.0)
            for task in pending:
                task.cancel()
        return ready_at, proc.returncode, what or describe_exit(proc.returncode)

    async def _until_ready(self, exited: asyncio.Task[int]) -> bool:
        """Poll the app's port (and health path) until it answers, it exits or time runs out."""
        port, path = self._config.app.port, self._config.app.health_path
        deadline = time.monotonic() + self.ready_timeout_s
        while not exited.done() and not self._stopping.is_set():
            if await probe(port, path) is None:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.wait({exited}, timeout=self.poll_interval_s)
        return False

    async def _watch(self, exited: asyncio.Task[int]) -> None:
        """Wait for the app to exit; meanwhile report a failing ``health_path`` as degraded."""
        path = self._config.app.health_path
        while not exited.done():
            await asyncio.wait({exited}, timeout=self.health_interval_s)
            if exited.done() or path is None or self._stopping.is_set():
                continue
            problem = await probe(self._config.app.port, path)
            if problem is not None:
                self._state.app_problem = f"app health check failed: {problem}"
            elif self._state.app_problem is not None:
                self._state.app_problem = None
