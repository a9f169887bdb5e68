"""The watchdog with a fake launcher, a scripted health check and a fake clock (no real sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from enclave_core.config import WatchdogSettings
from enclave_core.errors import LauncherError, StateConflict
from enclave_core.plugin.interfaces import EnclaveDescription, ExitInfo, LaunchSpec
from enclave_core.supervisor.runtime_client import Probe
from enclave_core.supervisor.watchdog import Backoff, Watchdog

READY = Probe(True, "ready")
DOWN = Probe(False, "unreachable", "connection refused")

SPEC = LaunchSpec(
    config_path=Path("/nonexistent/enclave.yaml"),
    cpu_count=2,
    memory_mib=512,
    cid=16,
    eif=Path("/nonexistent/image.eif"),
    debug_mode=False,
    name="hello",
)


class FakeLauncher:
    """A launcher whose enclave is a flag; tests crash it by hand."""

    name: ClassVar[str] = "fake"

    def __init__(self) -> None:
        self.running = False
        self.starts = 0
        self.stops = 0
        self.fail_start: str | None = None
        self.exit: ExitInfo | None = None
        self.desc: EnclaveDescription | None = None

    def start(self, spec: LaunchSpec) -> EnclaveDescription:
        if self.fail_start:
            raise LauncherError(self.fail_start)
        self.starts += 1
        self.running = True
        self.desc = EnclaveDescription(
            f"i-0000000000000000-enc{self.starts:016x}",
            spec.cid,
            1000 + self.starts,
            "RUNNING",
            spec.name,
            spec.cpu_count,
            spec.memory_mib,
        )
        return self.desc

    def describe(self) -> EnclaveDescription | None:
        return self.desc if self.running else None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.running:
            self.stops += 1
            self.crash("SIGTERM", "stopped by the supervisor: runtime killed by SIGTERM")

    def crash(self, signal: str = "SIGKILL", reason: str = "runtime killed by SIGKILL") -> None:
        self.running = False
        self.exit = ExitInfo(None, signal, ["boot", "last words"], "2025-01-01T00:00:00Z", reason)

    def last_exit(self) -> ExitInfo | None:
        return self.exit

    def enclave_address(self, port: int) -> str:
        return f"tcp://127.0.0.1:{port}"

    def log_lines(self) -> list[str]:
        return ["boot", "last words"]


class Harness:
    """A watchdog on a fake clock; ``sleeps`` records every sleep it asked for."""

    def __init__(self, **settings: Any) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.probes: list[Probe] = []
        self.default_probe = READY
        self.during_sleep: Callable[[], Awaitable[None]] | None = None
        self.launcher = FakeLauncher()
        defaults = {
            "interval_s": 1.0,
            "backoff_initial_s": 1.0,
            "backoff_max_s": 30.0,
            "unhealthy_after": 3,
        }
        self.watchdog = Watchdog(
            self.launcher,
            SPEC,
            self.probe,
            WatchdogSettings(**{**defaults, **settings}),
            clock=lambda: self.now,
            sleep=self.sleep,
            stable_s=60.0,
            boot_grace_s=60.0,
        )

    def probe(self) -> Probe:
        return self.probes.pop(0) if self.probes else self.default_probe

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.during_sleep is not None:
            await self.during_sleep()

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run(coro)  # type: ignore[arg-type]

    def tick(self, advance: float = 1.0) -> None:
        self.now += advance
        self.run(self.watchdog.tick())


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(1, 30)
    assert [backoff.next() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    backoff.reset()
    assert backoff.at_initial and backoff.next() == 1
    assert [Backoff(0.5, 4).next() for _ in range(1)] == [0.5]


def test_each_crash_restarts_with_a_doubling_delay() -> None:
    h = Harness()
    h.run(h.watchdog.boot())
    assert h.launcher.starts == 1
    for _ in range(7):
        h.tick()  # healthy
        h.launcher.crash()
        h.tick()  # finds it gone, waits, restarts
    assert h.sleeps == [1, 2, 4, 8, 16, 30, 30]
    assert h.watchdog.restarts == 7 and h.launcher.starts == 8
    last = h.watchdog.last_exit
    assert last is not None and last.signal == "SIGKILL" and last.log_tail == ["boot", "last words"]


def test_backoff_resets_after_a_stable_minute() -> None:
    h = Harness()
    h.run(h.watchdog.boot())
    for _ in range(3):
        h.tick()
        h.launcher.crash()
        h.tick()
    assert h.sleeps == [1, 2, 4]
    # Ready for 30 s only: not stable yet, the delay keeps doubling.
    h.tick()
    h.tick(30)
    h.launcher.crash()
    h.tick()
    assert h.sleeps[-1] == 8
    # Ready for a full minute: the next crash waits the initial delay again.
    h.tick()
    h.tick(30)
    h.tick(31)
    h.launcher.crash()
    h.tick()
    assert h.sleeps[-1] == 1
    h.tick()
    h.launcher.crash()
    h.tick()
    assert h.sleeps[-1] == 2


def test_unhealthy_checks_in_a_row_restart_the_enclave() -> None:
    h = Harness()
    h.run(h.watchdog.boot())
    h.probes = [DOWN, DOWN, READY, DOWN, DOWN]  # the READY breaks the streak
    for _ in range(5):
        h.tick()
    assert h.launcher.stops == 0 and h.watchdog.restarts == 0
    assert h.watchdog.status(h.launcher.describe()) == "error"
    h.probes = [Probe(False, "degraded", "app exited")]
    h.tick()  # third failure in a row
    assert h.launcher.stops == 1 and h.launcher.starts == 2 and h.watchdog.restarts == 1
    assert h.sleeps == [1]
    last = h.watchdog.last_exit
    assert last is not None
    assert last.reason == (
        "runtime unhealthy: 3 failed health checks in a row (last: degraded: app exited)"
    )
    assert last.signal == "SIGTERM"  # what stopping it took
    assert h.watchdog.probe is None  # forgotten for the new enclave


def test_a_booting_runtime_counts_as_failing_only_after_the_grace() -> None:
    h = Harness(unhealthy_after=2)
    h.run(h.watchdog.boot())
    h.probes = [DOWN] * 5  # not listening yet
    h.default_probe = Probe(False, "initializing", "kms_key")
    for _ in range(10):
        h.tick(5)  # 50 s of a slow boot
    assert h.launcher.stops == 0
    assert h.watchdog.status(h.launcher.describe()) == "starting"
    h.tick(10)
    h.tick(5)  # 65 s: past the grace, two failures in a row
    assert h.launcher.stops == 1 and h.watchdog.restarts == 1
    assert "initializing: kms_key" in h.watchdog.last_exit.reason  # type: ignore[union-attr]


def test_unreachable_after_being_ready_counts_at_once() -> None:
    h = Harness(unhealthy_after=2)
    h.run(h.watchdog.boot())
    h.probes = [READY, DOWN, DOWN]
    for _ in range(3):
        h.tick()
    assert h.launcher.stops == 1 and h.watchdog.restarts == 1


def test_stop_suspends_and_start_resumes() -> None:
    h = Harness()
    h.run(h.watchdog.boot())
    h.tick()
    assert h.watchdog.status(h.launcher.describe()) == "running"
    h.run(h.watchdog.stop_enclave())
    assert h.launcher.running is False
    assert h.watchdog.status(None) == "stopped"
    with pytest.raises(StateConflict):
        h.run(h.watchdog.stop_enclave())
    for _ in range(3):
        h.tick()
    assert h.launcher.starts == 1 and h.sleeps == [] and h.watchdog.restarts == 0
    h.run(h.watchdog.start_enclave())
    assert h.launcher.starts == 2 and h.watchdog.status(h.launcher.describe()) == "starting"
    with pytest.raises(StateConflict, match="already running"):
        h.run(h.watchdog.start_enclave())
    h.launcher.crash()
    h.tick()
    assert h.watchdog.restarts == 1 and h.launcher.starts == 3  # watching again


def test_stop_during_the_backoff_cancels_the_restart() -> None:
    h = Harness()
    h.run(h.watchdog.boot())
    h.launcher.crash()

    async def stop_now() -> None:
        h.during_sleep = None
        await h.watchdog.stop_enclave()

    h.during_sleep = stop_now
    h.tick()
    assert h.sleeps == [1]
    assert h.launcher.starts == 1 and h.watchdog.restarts == 0
    assert h.watchdog.status(h.launcher.describe()) == "stopped"


def test_a_failing_launcher_is_reported_and_retried() -> None:
    h = Harness()
    h.launcher.fail_start = "cannot start enclave 'hello': nitro-cli: no such file"
    h.run(h.watchdog.boot())
    assert h.watchdog.status(None) == "error"
    assert h.watchdog.error == h.launcher.fail_start
    h.tick()
    h.tick()
    assert h.sleeps == [1, 2] and h.launcher.starts == 0
    h.launcher.fail_start = None
    h.tick()
    assert h.launcher.starts == 1 and h.watchdog.error is None
    assert h.watchdog.restarts == 3
    h.tick()
    body = h.run(h.watchdog.health())
    assert body["status"] == "running" and body["restarts"] == 3


def test_health_body_has_the_contract_fields() -> None:
    h = Harness()
    h.run(h.watchdog.boot())
    h.default_probe = Probe(False, "initializing", "config")
    body = h.run(h.watchdog.health())
    assert body["status"] == "starting"  # launched, runtime not ready yet
    assert set(body) >= {
        "status",
        "enclave_id",
        "enclave_cid",
        "state",
        "restarts",
        "last_exit",
        "timestamp",
    }
    assert body["enclave_cid"] == 16 and body["state"] == "RUNNING"
    assert body["last_exit"] is None and body["timestamp"].endswith("Z")
    h.launcher.crash()
    h.tick()
    body = h.run(h.watchdog.health())
    assert body["last_exit"]["signal"] == "SIGKILL"
    assert body["last_exit"]["reason"] == "runtime killed by SIGKILL"
