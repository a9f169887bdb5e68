"""The watchdog: keeps the enclave alive and owns its lifecycle state.

Every ``interval_s`` it asks the launcher whether the enclave exists and probes the runtime's
control ``/health``; when the enclave is gone or fails ``unhealthy_after`` probes in a row it
records why in ``last_exit`` and restarts it with doubling backoff (docs/architecture.md, "The
watchdog"). Launcher and probe calls run in worker threads; the clock and sleep are injected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from enclave_core.config import WatchdogSettings
from enclave_core.errors import EnclaveError, LauncherError, StateConflict
from enclave_core.log import utc_now
from enclave_core.plugin.interfaces import EnclaveDescription, ExitInfo, Launcher, LaunchSpec
from enclave_core.supervisor.runtime_client import Probe

EXIT_TAIL_LINES = 20


class Backoff:
    """Restart delays: ``initial``, doubling each time, capped at ``maximum``."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = min(initial, maximum)

    def next(self) -> float:
        """Return the delay to wait now and double the following one."""
        delay = self._next
        self._next = min(max(delay * 2, delay), self.maximum)
        return delay

    def reset(self) -> None:
        """Start over at ``initial``."""
        self._next = min(self.initial, self.maximum)

    @property
    def at_initial(self) -> bool:
        """Whether the next delay is the initial one."""
        return self._next == min(self.initial, self.maximum)


class Watchdog:
    """Starts, watches, restarts and stops the enclave; the management API reads its state."""

    def __init__(
        self,
        launcher: Launcher,
        spec: LaunchSpec,
        health_check: Callable[[], Probe],
        settings: WatchdogSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        stable_s: float = 60.0,
        boot_grace_s: float = 60.0,
        stop_timeout_s: float = 6.0,
    ) -> None:
        self.launcher = launcher
        self.spec = spec
        self.settings = settings
        self.restarts = 0
        self.last_exit: ExitInfo | None = None
        #: Why the last start failed, while the enclave could not be started.
        self.error: str | None = None
        #: The latest probe since the enclave was (re)started.
        self.probe: Probe | None = None
        self._health_check = health_check
        self._clock = clock
        self._sleep = sleep
        self._stable_s = stable_s
        self._boot_grace_s = boot_grace_s
        self._stop_timeout_s = stop_timeout_s
        self._backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
        self._lock = asyncio.Lock()
        self._suspended = False
        self._closed = False
        # Bumped by every start/stop so a restart scheduled before it is abandoned.
        self._generation = 0
        self._launched_at: float | None = None
        self._ready_since: float | None = None
        self._ever_ready = False
        self._failures = 0

    @property
    def suspended(self) -> bool:
        """Whether the enclave was stopped on purpose (``POST /v1/stop``)."""
        return self._suspended

    # ------------------------------------------------------------------ lifecycle

    async def boot(self) -> None:
        """Start the enclave when the supervisor starts; a failure is retried by :meth:`tick`."""
        async with self._lock:
            await self._launch()

    async def run(self) -> None:
        """Tick every ``interval_s`` until cancelled. Run exactly one per supervisor."""
        while not self._closed:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("watchdog check failed")
            await self._sleep(self.settings.interval_s)

    async def tick(self) -> None:
        """One check: find a gone or unhealthy enclave and restart it after the backoff delay."""
        async with self._lock:
            if self._suspended or self._closed:
                return
            generation = self._generation
            desc = await asyncio.to_thread(self.launcher.describe)
            if desc is None:
                reason = await asyncio.to_thread(self._record_gone)
            else:
                probe = await asyncio.to_thread(self._health_check)
                unhealthy = self._judge(probe)
                if unhealthy is None:
                    return
                await asyncio.to_thread(self.launcher.stop, self._stop_timeout_s)
                reason = await asyncio.to_thread(self._record_unhealthy, unhealthy)
            self._forget_launch()
            delay = self._backoff.next()
        logger.bind(delay_s=delay, reason=reason, restarts=self.restarts + 1).warning(
            "restarting enclave"
        )
        await self._sleep(delay)
        async with self._lock:
            if self._suspended or self._closed or generation != self._generation:
                return  # stopped, started by hand or shutting down while we waited
            self.restarts += 1
            await self._launch()

    async def start_enclave(self) -> None:
        """``POST /v1/start``: start now and resume watching; StateConflict if already running."""
        async with self._lock:
            desc = await asyncio.to_thread(self.launcher.describe)
            if desc is not None and not self._suspended:
                raise StateConflict(f"enclave {desc.enclave_id} is already running")
            self._suspended = False
            self._generation += 1
            self._backoff.reset()
            if desc is None:
                await self._launch()
                if self.error is not None:
                    raise LauncherError(self.error)
        logger.info("enclave started on request")

    async def stop_enclave(self) -> None:
        """``POST /v1/stop``: stop the enclave and suspend watching; StateConflict if stopped."""
        async with self._lock:
            if self._suspended:
                raise StateConflict("the enclave is already stopped")
            self._suspended = True
            self._generation += 1
            await asyncio.to_thread(self.launcher.stop, self._stop_timeout_s)
            self.last_exit = await asyncio.to_thread(self.launcher.last_exit) or self.last_exit
            self._forget_launch()
            self.error = None
        logger.info("enclave stopped on request")

    async def shutdown(self) -> None:
        """Stop the enclave for good (the supervisor is exiting)."""
        self._closed = True
        async with self._lock:
            await asyncio.to_thread(self.launcher.stop, self._stop_timeout_s)

    # ------------------------------------------------------------------ state for the API

    def status(self, desc: EnclaveDescription | None) -> str:
        """``running``, ``stopped``, ``starting`` or ``error`` given the launcher's view.

        ``running`` means launched AND the runtime answered ready. ``starting`` means launched
        but not ready yet, or a restart is pending. ``error`` means the launcher could not start
        it, or the runtime, once up, reports degraded or stopped answering.
        """
        if self._suspended:
            return "stopped"
        if desc is None:
            return "error" if self.error else "starting"
        if self.probe is None:
            return "starting"
        if self.probe.ok:
            return "running"
        if not self._ever_ready and self.probe.status in ("initializing", "unreachable"):
            return "starting"
        return "error"

    async def health(self) -> dict[str, Any]:
        """The body of the supervisor's ``GET /health``, with a fresh probe of the runtime.

        The probe only updates what is shown; failures are counted by :meth:`tick` alone.
        """
        desc = await asyncio.to_thread(self.launcher.describe)
        if desc is not None and not self._suspended and self._launched_at is not None:
            probe = await asyncio.to_thread(self._health_check)
            self.probe = probe
            self._ever_ready = self._ever_ready or probe.ok
        return {
            "status": self.status(desc),
            "enclave_id": desc.enclave_id if desc else None,
            "enclave_cid": desc.enclave_cid if desc else None,
            "state": desc.state if desc else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit.as_json() if self.last_exit else None,
            "error": self.error,
            "runtime": self.probe.as_json() if self.probe else None,
            "timestamp": utc_now(),
        }

    # ------------------------------------------------------------------ internals

    async def _launch(self) -> None:
        try:
            await asyncio.to_thread(self.launcher.start, self.spec)
        except EnclaveError as exc:
            self.error = str(exc)
            self._launched_at = None
            logger.bind(error=self.error).error("enclave failed to start")
            return
        self.error = None
        self._launched_at = self._clock()
        self._ready_since = None
        self._ever_ready = False
        self._failures = 0
        self.probe = None

    def _forget_launch(self) -> None:
        self._launched_at = None
        self._ready_since = None
        self._ever_ready = False
        self._failures = 0
        self.probe = None

    def _judge(self, probe: Probe) -> str | None:
        """Record a probe; return a reason to restart once ``unhealthy_after`` fail in a row."""
        now = self._clock()
        self.probe = probe
        if probe.ok:
            self._failures = 0
            self._ever_ready = True
            if self._ready_since is None:
                self._ready_since = now
            elif now - self._ready_since >= self._stable_s and not self._backoff.at_initial:
                self._backoff.reset()
                logger.info("enclave stable; restart backoff reset", stable_s=self._stable_s)
            return None
        self._ready_since = None
        booting = self._launched_at is not None and now - self._launched_at < self._boot_grace_s
        if booting and not self._ever_ready and probe.status in ("initializing", "unreachable"):
            # A booting runtime may not listen yet, then reports its stages: not a failure
            # until the grace period ends.
            return None
        self._failures += 1
        logger.bind(failures=self._failures, health=probe.describe()).warning(
            "enclave health check failed"
        )
        if self._failures < self.settings.unhealthy_after:
            return None
        return (
            f"runtime unhealthy: {self._failures} failed health checks in a row "
            f"(last: {probe.describe()})"
        )

    def _record_gone(self) -> str:
        if self._launched_at is None and self.error is not None:
            return f"enclave failed to start: {self.error}"
        info = self.launcher.last_exit()
        if info is None:
            info = ExitInfo(None, None, self._tail(), utc_now(), "enclave is gone")
        self.last_exit = info
        return info.reason or "enclave is gone"

    def _record_unhealthy(self, reason: str) -> str:
        stopped = self.launcher.last_exit()
        self.last_exit = ExitInfo(
            exit_code=stopped.exit_code if stopped else None,
            signal=stopped.signal if stopped else None,
            log_tail=stopped.log_tail if stopped else self._tail(),
            timestamp=utc_now(),
            reason=reason,
        )
        return reason

    def _tail(self) -> list[str]:
        return self.launcher.log_lines()[-EXIT_TAIL_LINES:]
