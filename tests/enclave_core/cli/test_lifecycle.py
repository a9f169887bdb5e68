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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enclave_core.cli.lifecycle import tail_lines
from enclave_core.cli.main import main
from enclave_core.config import Config
from tests.enclave_core.cli.fake_supervisor import FakeSupervisor, config_for, running_supervisor


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- status, start, stop


@pytest.fixture
def supervisor() -> Iterator[FakeSupervisor]:
    with running_supervisor() as fake:
        yield fake


@pytest.fixture
def config(make_config: Callable[..., Config], supervisor: FakeSupervisor) -> Config:
    return config_for(make_config, supervisor, "ab" * 32)


HEALTH = {
    "status": "running",
    "enclave_id": "i-0-enc-1",
    "enclave_cid": 16,
    "state": "RUNNING",
    "restarts": 2,
    "last_exit": {"exit_code": None, "signal": "SIGKILL", "log_tail": []},
    "timestamp": "2026-01-01T00:00:00Z",
}


def test_status_shows_the_supervisors_health(
    capsys: pytest.CaptureFixture[str], config: Config, supervisor: FakeSupervisor
) -> None:
    supervisor.answers[("GET", "/health")] = (200, HEALTH)
    code, out, err = cli(capsys, "status", "-c", str(config.path), "-f", "json")
    assert (code, err) == (0, "")
    assert json.loads(out) == HEALTH
    # A stopped enclave answers 503; status still shows why.
    supervisor.answers[("GET", "/health")] = (503, {**HEALTH, "status": "stopped"})
    code, out, _ = cli(
        capsys, "status", "-c", str(config.path), "-f", "value", "--column", "status"
    )
    assert (code, out) == (0, "stopped\n")


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


def test_start_and_stop_post_with_the_token(
    capsys: pytest.CaptureFixture[str], config: Config, supervisor: FakeSupervisor
) -> None:
    supervisor.answers[("POST", "/v1/start")] = (200, {"status": "starting"})
    supervisor.answers[("POST", "/v1/stop")] = (200, {"status": "stopped"})
    assert cli(capsys, "start", "-c", str(config.path), "-f", "json")[:2] == (
        0,
        '{\n  "status": "starting"\n}\n',
    )
    assert cli(capsys, "stop", "-c", str(config.path), "-f", "value")[:2] == (0, "stopped\n")
    assert [request[:3] for request in supervisor.requests] == [
        ("POST", "/v1/start", "Bearer " + "ab" * 32),
        ("POST", "/v1/stop", "Bearer " + "ab" * 32),
    ]


def test_conflicts_say_already_running_or_stopped(
    capsys: pytest.CaptureFixture[str], config: Config, supervisor: FakeSupervisor
) -> None:
    conflict = (409, {"title": "Conflict", "description": "the enclave is in that state"})
    supervisor.answers[("POST", "/v1/start")] = conflict
    supervisor.answers[("POST", "/v1/stop")] = conflict
    assert cli(capsys, "start", "-c", str(config.path)) == (
        1,
        "",
        "ERROR: enclave is already running\n",
    )
    assert cli(capsys, "stop", "-c", str(config.path)) == (
        1,
        "",
        "ERROR: enclave is already stopped\n",
    )


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
