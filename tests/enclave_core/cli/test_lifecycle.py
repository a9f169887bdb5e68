"""`enclave status`, `start`, `stop` and `logs`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from enclave_core.cli import lifecycle
from enclave_core.cli.lifecycle import tail_lines
from enclave_core.config import Config
from tests.doubles.fake_supervisor import TOKEN, FakeSupervisor
from tests.helpers import cli

# --------------------------------------------------------------------------- status, start, stop


HEALTH = {
    "status": "running",
    "enclave_id": "i-0-enc-1",
    "enclave_cid": 16,
    "state": "RUNNING",
    "restarts": 2,
    "last_exit": {"exit_code": None, "signal": "SIGKILL", "log_tail": []},
    "timestamp": "2026-01-01T00:00:00Z",
}
PCR0 = "ab12" * 24


def entry_line(msg: str, level: str = "INFO", **fields: object) -> str:
    """A runtime JSON log line as the launcher keeps it."""
    return json.dumps(
        {"time": "2026-01-01T10:00:00.250+00:00", "level": level, "msg": msg, **fields}
    )


def clock_of(line: str) -> str:
    """The HH:MM:SS.mmm a readable line shows for ``line``'s time, in local time."""
    when = datetime.fromisoformat(json.loads(line)["time"]).astimezone()
    return when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def health(status: str, **fields: object) -> dict[str, object]:
    """A supervisor /health document."""
    return {
        **HEALTH,
        "status": status,
        "restarts": 0,
        "last_exit": None,
        "error": None,
        "runtime": None,
        **fields,
    }


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "START_POLL_S", 0.01)


def test_status_shows_the_supervisors_health(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    fake_supervisor.answers[("GET", "/health")] = (200, HEALTH)
    code, out, err = cli(capsys, "status", "-c", str(supervised_config.path), "-f", "json")
    assert (code, err) == (0, "")
    assert json.loads(out) == HEALTH
    # A stopped enclave answers 503; status still shows why.
    fake_supervisor.answers[("GET", "/health")] = (503, {**HEALTH, "status": "stopped"})
    code, out, _ = cli(
        capsys, "status", "-c", str(supervised_config.path), "-f", "value", "--column", "status"
    )
    assert (code, out) == (0, "stopped\n")


def test_status_table_reads_last_exit_as_its_reason_and_last_log_lines(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    tail = [entry_line(f"step {i}", step=i) for i in range(5)] + [
        "Traceback (most recent call last):",
        entry_line("boot failed", "ERROR", stage="kms", error="KMS key k-1 is locked", dek="c2Vj"),
    ]
    last_exit = {
        "exit_code": 1,
        "signal": None,
        "reason": "runtime exited with code 1",
        "log_tail": tail,
        "timestamp": "2026-01-01T10:00:01Z",
    }
    fake_supervisor.answers[("GET", "/health")] = (503, health("starting", last_exit=last_exit))
    code, out, err = cli(capsys, "status", "-c", str(supervised_config.path))
    assert (code, err) == (0, "")
    assert "runtime exited with code 1 (exit code 1, at 2026-01-01T10:00:01Z)" in out
    stamp = clock_of(tail[0])
    for shown in (
        f"{stamp} INFO    runtime    step 2  step=2",
        f"{stamp} INFO    runtime    step 4  step=4",
        "app        Traceback (most recent call last):",
        f'{stamp} ERROR   runtime    boot failed  stage=kms error="KMS key k-1 is locked"',
    ):
        assert shown in out
    assert "step 1" not in out  # only the last five lines
    assert '{"time"' not in out and "c2Vj" not in out and "dek" not in out
    # -f json keeps the whole document.
    code, out, _ = cli(capsys, "status", "-c", str(supervised_config.path), "-f", "json")
    assert json.loads(out)["last_exit"] == last_exit


def test_status_against_a_dead_supervisor_is_one_error_line(
    capsys: pytest.CaptureFixture[str], make_config: Callable[..., Config]
) -> None:
    config = make_config()  # nothing listens on its supervisor port
    code, out, err = cli(capsys, "status", "-c", str(config.path))
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"ERROR: supervisor not reachable at http://{config.supervisor.listen}"
    )


def test_start_waits_until_running_and_prints_one_line(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    booting = health("starting", runtime={"status": "initializing", "detail": "kms"})
    fake_supervisor.answers[("POST", "/v1/start")] = (200, health("starting"))
    fake_supervisor.queued[("GET", "/health")] = [(503, booting), (503, booting)]
    fake_supervisor.answers[("GET", "/health")] = (200, health("running"))
    fake_supervisor.answers[("GET", "/v1/enclave-info")] = (200, {"name": "hello", "pcr0": PCR0})
    code, out, err = cli(capsys, "start", "-c", str(supervised_config.path))
    assert (code, out, err) == (0, f"started: enclave i-0-enc-1 running (PCR0 {PCR0[:16]}…)\n", "")
    assert [request[:3] for request in fake_supervisor.requests] == [
        ("POST", "/v1/start", "Bearer " + TOKEN),
        ("GET", "/health", None),
        ("GET", "/health", None),
        ("GET", "/health", None),
        ("GET", "/v1/enclave-info", None),
    ]
    # For scripts: the structured answer, its outcome first.
    code, out, _ = cli(capsys, "start", "-c", str(supervised_config.path), "-f", "json")
    assert code == 0
    assert json.loads(out) == {"outcome": "started", **health("running"), "pcr0": PCR0}
    assert list(json.loads(out))[0] == "outcome"


def test_start_without_waiting_or_without_enclave_info(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    fake_supervisor.answers[("POST", "/v1/start")] = (200, health("starting"))
    code, out, _ = cli(capsys, "start", "-c", str(supervised_config.path), "--timeout", "0")
    assert (code, out) == (0, "starting: enclave i-0-enc-1\n")
    assert [request[1] for request in fake_supervisor.requests] == ["/v1/start"]
    # Running at once, but the enclave-info cannot be read: no PCR0 rather than a failure.
    fake_supervisor.answers[("POST", "/v1/start")] = (200, health("running"))
    code, out, _ = cli(capsys, "start", "-c", str(supervised_config.path))
    assert (code, out) == (0, "started: enclave i-0-enc-1 running\n")


def test_start_reports_the_runtimes_boot_error(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    fake_supervisor.answers[("POST", "/v1/start")] = (200, health("starting"))
    degraded = {"status": "degraded", "detail": "KMS key k-1 is locked to another PCR0"}
    fake_supervisor.answers[("GET", "/health")] = (503, health("error", runtime=degraded))
    assert cli(capsys, "start", "-c", str(supervised_config.path)) == (
        1,
        "",
        "ERROR: enclave failed to start: runtime degraded: KMS key k-1 is locked to another PCR0\n",
    )


def test_start_reports_a_runtime_that_exited_while_booting(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    before = {
        "exit_code": None,
        "signal": "SIGTERM",
        "reason": "stopped by the supervisor: runtime killed by SIGTERM",
        "log_tail": [],
        "timestamp": "2026-01-01T09:00:00Z",
    }
    ended = {
        "exit_code": 3,
        "signal": None,
        "reason": "runtime exited with code 3",
        "log_tail": [
            entry_line("boot failed", "ERROR", error="ConfigError: no such key", token="t0k3n"),
            entry_line("bye"),
        ],
        "timestamp": "2026-01-01T10:00:02Z",
    }
    fake_supervisor.answers[("POST", "/v1/start")] = (200, health("starting", last_exit=before))
    fake_supervisor.answers[("GET", "/health")] = (503, health("starting", last_exit=ended))
    code, out, err = cli(capsys, "start", "-c", str(supervised_config.path))
    assert (code, out) == (1, "")
    assert err == (
        "ERROR: enclave failed to start: runtime exited with code 3 (exit code 3, at "
        "2026-01-01T10:00:02Z); last error: boot failed: ConfigError: no such key\n"
    )


def test_start_reports_the_launchers_error(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    why = "cannot start enclave 'hello': nitro-cli: No such file or directory"
    fake_supervisor.answers[("POST", "/v1/start")] = (
        500,
        {"title": "Launcher error", "description": why},
    )
    fake_supervisor.answers[("GET", "/health")] = (503, health("error", error=why))
    assert cli(capsys, "start", "-c", str(supervised_config.path)) == (
        1,
        "",
        f"ERROR: enclave failed to start: {why}\n",
    )
    # Another failure (here a refused token) is reported as the API answered it.
    fake_supervisor.answers[("POST", "/v1/start")] = (
        403,
        {"title": "Forbidden", "description": "the supervisor token is wrong"},
    )
    fake_supervisor.answers[("GET", "/health")] = (503, health("stopped"))
    assert cli(capsys, "start", "-c", str(supervised_config.path))[1:] == (
        "",
        "ERROR: supervisor POST /v1/start failed (403): the supervisor token is wrong\n",
    )


def test_start_gives_up_after_its_timeout(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    booting = health("starting", runtime={"status": "initializing", "detail": "kms"})
    fake_supervisor.answers[("POST", "/v1/start")] = (200, booting)
    fake_supervisor.answers[("GET", "/health")] = (503, booting)
    assert cli(capsys, "start", "-c", str(supervised_config.path), "--timeout", "0.2") == (
        1,
        "",
        "ERROR: enclave not running after 0.2 s: status starting, runtime initializing (kms)\n",
    )


def test_stop_prints_one_line(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    stopped = health("stopped", enclave_id=None, enclave_cid=None, state=None)
    fake_supervisor.answers[("POST", "/v1/stop")] = (200, stopped)
    assert cli(capsys, "stop", "-c", str(supervised_config.path)) == (0, "stopped\n", "")
    code, out, _ = cli(capsys, "stop", "-c", str(supervised_config.path), "-f", "json")
    assert (code, json.loads(out)) == (0, {"outcome": "stopped", **stopped})
    code, out, _ = cli(
        capsys, "stop", "-c", str(supervised_config.path), "-f", "value", "--column", "outcome"
    )
    assert (code, out) == (0, "stopped\n")
    assert [request[:3] for request in fake_supervisor.requests] == [
        ("POST", "/v1/stop", "Bearer " + TOKEN)
    ] * 3


def test_conflicts_say_already_running_or_stopped(
    capsys: pytest.CaptureFixture[str], supervised_config: Config, fake_supervisor: FakeSupervisor
) -> None:
    conflict = (409, {"title": "Conflict", "description": "the enclave is in that state"})
    fake_supervisor.answers[("POST", "/v1/start")] = conflict
    fake_supervisor.answers[("POST", "/v1/stop")] = conflict
    fake_supervisor.answers[("GET", "/health")] = (200, health("running"))
    assert cli(capsys, "start", "-c", str(supervised_config.path)) == (0, "already running\n", "")
    fake_supervisor.answers[("GET", "/health")] = (503, health("stopped"))
    assert cli(capsys, "stop", "-c", str(supervised_config.path)) == (0, "already stopped\n", "")
    code, out, _ = cli(capsys, "stop", "-c", str(supervised_config.path), "-f", "json")
    assert json.loads(out) == {"outcome": "already stopped", **health("stopped")}


# --------------------------------------------------------------------------- logs


def write_log(config: Config, lines: list[str]) -> Path:
    path = config.state_dir / "logs" / "runtime.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def log_line(i: int) -> str:
    return json.dumps({"time": f"t{i}", "level": "INFO", "msg": f"line {i}"})


def test_logs_prints_the_last_lines(
    capsys: pytest.CaptureFixture[str], make_config: Callable[..., Config]
) -> None:
    config = make_config()
    lines = [log_line(i) for i in range(150)]
    write_log(config, lines)
    code, out, err = cli(capsys, "logs", "-c", str(config.path))
    assert (code, err) == (0, "")
    assert out.splitlines() == lines[-100:]
    code, out, _ = cli(capsys, "logs", "-c", str(config.path), "--lines", "3")
    assert out.splitlines() == lines[-3:]
    code, out, _ = cli(capsys, "logs", "-c", str(config.path), "--lines", "0")
    assert (code, out) == (0, "")


def test_logs_without_enclave_yaml_uses_the_folder_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / ".enclave" / "logs" / "runtime.log"
    log.parent.mkdir(parents=True)
    log.write_text("one\ntwo\n")
    code, out, _ = cli(capsys, "logs", "-c", str(tmp_path / "enclave.yaml"))
    assert (code, out) == (0, "one\ntwo\n")


def test_logs_missing_file_is_one_error_line(
    capsys: pytest.CaptureFixture[str], make_config: Callable[..., Config]
) -> None:
    config = make_config()
    path = config.state_dir / "logs" / "runtime.log"
    assert cli(capsys, "logs", "-c", str(config.path)) == (
        1,
        "",
        f"ERROR: no logs yet at {path}: has the enclave run?\n",
    )


def test_tail_lines_across_block_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    lines = [f"{i:05d} " + "x" * (i % 977) for i in range(3000)]  # about 1.5 MB
    path.write_bytes("".join(line + "\n" for line in lines).encode() + b"partial")
    for count in (1, 7, 100, 2999, 3000, 5000):
        got, offset = tail_lines(path, count)
        assert [line.decode().rstrip("\n") for line in got] == lines[-count:]
        assert offset == path.stat().st_size - len(b"partial")  # the partial line comes later


def test_logs_follow_survives_truncation_and_rotation(make_config: Callable[..., Config]) -> None:
    config = make_config()
    path = write_log(config, ["old 1", "old 2", "old 3"])
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enclave_core.cli.main",
            "logs",
            "-c",
            str(config.path),
            "--follow",
            "--lines",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    stdout = process.stdout
    seen: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stdout:
            seen.put(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def expect(*wanted: str) -> None:
        got: list[str] = []
        deadline = time.monotonic() + 20
        while len(got) < len(wanted) and time.monotonic() < deadline:
            try:
                got.append(seen.get(timeout=0.2))
            except queue.Empty:
                continue
        assert got == list(wanted)

    try:
        expect("old 2", "old 3")
        with path.open("a") as handle:
            handle.write("new 1\nnew ")
            handle.flush()
            handle.write("2\n")
        expect("new 1", "new 2")
        path.write_text("after truncation\n")  # truncated in place, then written
        expect("after truncation")
        path.rename(path.with_suffix(".log.1"))  # rotated: a new file takes its name
        path.write_text("rotated 1\nrotated 2\n")
        expect("rotated 1", "rotated 2")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=20)
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        reader.join(5)
        process.stdout.close()
        assert process.stderr is not None
        stderr = process.stderr.read()
        process.stderr.close()
    assert code == 0, stderr
    assert "Traceback" not in stderr
