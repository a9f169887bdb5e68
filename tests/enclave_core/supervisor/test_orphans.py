"""A runtime left behind by a dead supervisor: recorded when started, ended by the next one."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from enclave_plugins.process_launcher import ProcessLauncher

from enclave_core.plugin.interfaces import LaunchSpec
from enclave_core.supervisor.orphans import (
    RUNTIME_PID_FILE,
    PidRecordingLauncher,
    record_runtime,
    stop_stale_runtime,
)
from tests.helpers import alive

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
    "time.sleep(60)",
]


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for proc in made:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def group(made: list[subprocess.Popen[bytes]], argv: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE)
    made.append(proc)
    return proc


def test_a_recorded_runtime_group_is_ended_by_the_next_supervisor(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    runtime = group(spawn, SLEEPER)
    assert record_runtime(tmp_path, runtime.pid)
    record = json.loads((tmp_path / RUNTIME_PID_FILE).read_text())
    assert record["pid"] == runtime.pid and record["start_time"].isdigit()
    assert stop_stale_runtime(tmp_path) == runtime.pid
    assert runtime.wait(timeout=5) == -15  # SIGTERM was enough
    assert not (tmp_path / RUNTIME_PID_FILE).exists()
    assert stop_stale_runtime(tmp_path) is None  # nothing recorded any more


def test_a_runtime_ignoring_sigterm_is_killed(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    runtime = group(spawn, STUBBORN)
    assert runtime.stdout is not None and runtime.stdout.readline() == b"up\n"
    assert record_runtime(tmp_path, runtime.pid)
    assert stop_stale_runtime(tmp_path, timeout_s=0.3) == runtime.pid
    assert runtime.wait(timeout=5) == -9


def test_a_reused_pid_or_a_foreign_process_is_never_signalled(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    runtime = group(spawn, SLEEPER)
    assert record_runtime(tmp_path, runtime.pid)
    path = tmp_path / RUNTIME_PID_FILE
    record = json.loads(path.read_text())
    # Same pid, another start time: the recorded process is gone and the pid was reused.
    path.write_text(json.dumps({**record, "start_time": str(int(record["start_time"]) + 1)}))
    assert stop_stale_runtime(tmp_path) is None
    time.sleep(0.1)
    assert alive(runtime.pid) and not path.exists()
    # Not recorded: our parent (not our child), a child in our own group, a garbage file.
    assert not record_runtime(tmp_path, os.getppid())
    same_group = subprocess.Popen(SLEEPER)
    spawn.append(same_group)
    assert not record_runtime(tmp_path, same_group.pid)
    assert not path.exists()
    path.write_text("not json")
    assert stop_stale_runtime(tmp_path) is None


def test_the_wrapping_launcher_records_starts_and_forgets_stops(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    inner = ProcessLauncher(tmp_path, command=SLEEPER, echo=io.StringIO())
    launcher = PidRecordingLauncher(inner, tmp_path)
    spec = LaunchSpec(tmp_path / "enclave.yaml", 1, 64, 16, tmp_path / "x.eif", False, "hello")
    desc = launcher.start(spec)
    try:
        path = tmp_path / RUNTIME_PID_FILE
        assert json.loads(path.read_text())["pid"] == desc.process_id
        assert launcher.describe() == desc
        assert launcher.enclave_address(5) == "tcp://127.0.0.1:5"
        launcher.stop(timeout_s=2)
        assert not path.exists() and launcher.describe() is None
        assert launcher.last_exit() is not None
    finally:
        inner.stop(timeout_s=1)
