"""Runtimes left behind by a supervisor that died abruptly, and how the next one ends them.

:class:`PidRecordingLauncher` records each runtime process group it spawns in
``state_dir/supervisor/runtime.pid`` (pid and start time); :func:`stop_stale_runtime`, called
when a supervisor starts, ends the recorded group if the same process still leads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import ClassVar

from loguru import logger

from enclave_core.plugin.interfaces import EnclaveDescription, ExitInfo, Launcher, LaunchSpec

RUNTIME_PID_FILE = Path("supervisor") / "runtime.pid"
STALE_STOP_S = 5.0


def _proc_stat(pid: int) -> tuple[int, int, str] | None:
    """``(ppid, process group, start time)`` of a live process from /proc, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[2]), fields[19]


def record_runtime(state_dir: Path, pid: int) -> bool:
    """Record ``pid`` as our runtime if it is a process group this process spawned itself.

    A launcher whose enclave is not our child (nitro-cli) is left alone: it finds its own
    leftovers. Returns whether a record was written.
    """
    stat = _proc_stat(pid)
    if stat is None or stat[0] != os.getpid() or stat[1] != pid:
        return False
    path = state_dir / RUNTIME_PID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"pid": pid, "start_time": stat[2]}, handle)
    os.replace(tmp, path)
    return True


def forget_runtime(state_dir: Path) -> None:
    """Remove the runtime record (the runtime was stopped on purpose)."""
    (state_dir / RUNTIME_PID_FILE).unlink(missing_ok=True)


def stop_stale_runtime(state_dir: Path, timeout_s: float = STALE_STOP_S) -> int | None:
    """End the process group a previous supervisor recorded, if it still runs; return its pid.

    Only a process with the recorded pid AND start time, leading its own group, is signalled
    (SIGTERM, then SIGKILL after ``timeout_s``), so a reused pid is never hit.
    """
    path = state_dir / RUNTIME_PID_FILE
    try:
        record = json.loads(path.read_text())
        pid, started = int(record["pid"]), str(record["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    stat = _proc_stat(pid)
    path.unlink(missing_ok=True)
    if stat is None or stat[1] != pid or stat[2] != started:
        return None
    logger.bind(pid=pid).warning("stopping a runtime left running by a previous supervisor")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = _proc_stat(pid)
            if now is None or now[2] != started:
                return pid
            time.sleep(0.05)
    return pid


class PidRecordingLauncher:
    """Wraps the configured launcher: records each runtime it starts, forgets it when stopped."""

    name: ClassVar[str] = "pid-recording"

    def __init__(self, inner: Launcher, state_dir: Path) -> None:
        self.inner = inner
        self._state_dir = state_dir

    def start(self, spec: LaunchSpec) -> EnclaveDescription:
        """Start through the wrapped launcher and record the runtime's process group."""
        desc = self.inner.start(spec)
        record_runtime(self._state_dir, desc.process_id)
        return desc

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop through the wrapped launcher and drop the record."""
        self.inner.stop(timeout_s)
        forget_runtime(self._state_dir)

    def describe(self) -> EnclaveDescription | None:
        """The wrapped launcher's answer."""
        return self.inner.describe()

    def last_exit(self) -> ExitInfo | None:
        """The wrapped launcher's answer."""
        return self.inner.last_exit()

    def enclave_address(self, port: int) -> str:
        """The wrapped launcher's answer."""
        return self.inner.enclave_address(port)

    def log_lines(self) -> list[str]:
        """The wrapped launcher's answer."""
        return self.inner.log_lines()
