"""The process launcher against real child processes (a small script stands in for the runtime)."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import marshmallow
import pytest
from enclave_plugins.process_launcher import ProcessLauncher, runtime_argv

from enclave_core.errors import LauncherError
from enclave_core.plugin.backends import build_backend
from enclave_core.plugin.interfaces import Launcher, LaunchSpec
from enclave_core.plugin.manager import get_plugin_manager
from tests.helpers import alive, wait_for

# Prints numbered lines, starts a child in its process group (like the app), records both pids,
# then sleeps. With IGNORE_TERM it survives SIGTERM, so only SIGKILL ends it.
FAKE_RUNTIME = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(sys.argv[1], "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    for i in range(30):
        print(f"line {i} {os.environ.get('MARKER', '')}", flush=True)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def make_spec(tmp_path: Path, **env: str) -> LaunchSpec:
    return LaunchSpec(
        config_path=tmp_path / "enclave.yaml",
        cpu_count=2,
        memory_mib=512,
        cid=21,
        eif=tmp_path / "image.eif",
        debug_mode=False,
        name="hello",
        env=env,
    )


class Fixture:
    """A launcher running FAKE_RUNTIME, plus where the script records its pids."""

    def __init__(self, tmp_path: Path, log_lines: int = 200) -> None:
        self.tmp_path = tmp_path
        script = tmp_path / "fake_runtime.py"
        script.write_text(FAKE_RUNTIME)
        self.pid_file = tmp_path / "pids"
        self.echo = io.StringIO()
        self.launcher = ProcessLauncher(
            tmp_path / ".enclave",
            command=[sys.executable, str(script), str(self.pid_file)],
            log_lines=log_lines,
            echo=self.echo,
        )

    def pids(self) -> tuple[int, int]:
        text = wait_for(lambda: self.pid_file.exists() and self.pid_file.read_text().strip())
        runtime, child = text.split()
        return int(runtime), int(child)

    def wait_ready(self) -> None:
        wait_for(lambda: "ready" in self.launcher.log_lines())


@pytest.fixture
def fx(tmp_path: Path) -> Iterator[Fixture]:
    fixture = Fixture(tmp_path)
    yield fixture
    fixture.launcher.stop(timeout_s=1)


def test_start_describes_the_process_like_nitro_cli(fx: Fixture, tmp_path: Path) -> None:
    desc = fx.launcher.start(make_spec(tmp_path, MARKER="from-spec"))
    runtime_pid, child_pid = fx.pids()
    assert desc.process_id == runtime_pid
    assert desc.enclave_cid == 21 and desc.state == "RUNNING" and desc.name == "hello"
    assert desc.enclave_id.startswith("i-0000000000000000-enc")
    assert len(desc.enclave_id.rsplit("enc", 1)[1]) == 16
    assert os.getpgid(runtime_pid) == runtime_pid  # its own process group
    assert os.getpgid(child_pid) == runtime_pid
    assert fx.launcher.describe() == desc
    assert desc.as_nitro_json()["EnclaveCID"] == 21
    assert fx.launcher.last_exit() is None
    fx.wait_ready()
    assert "line 0 from-spec" in fx.launcher.log_lines()  # spec.env reached the process


def test_output_goes_to_log_file_tail_and_stderr(tmp_path: Path) -> None:
    fx = Fixture(tmp_path, log_lines=5)
    fx.launcher.start(make_spec(tmp_path))
    try:
        fx.wait_ready()
        assert fx.launcher.log_lines() == ["line 26 ", "line 27 ", "line 28 ", "line 29 ", "ready"]
        log = tmp_path / ".enclave" / "logs" / "runtime.log"
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
        lines = log.read_text().splitlines()
        assert lines[0] == "line 0 " and lines[-1] == "ready" and len(lines) == 31
        assert fx.echo.getvalue().splitlines() == lines
    finally:
        fx.launcher.stop(timeout_s=1)
    # A second run appends to the same file.
    fx.pid_file.unlink()
    fx.launcher.start(make_spec(tmp_path))
    fx.wait_ready()
    fx.launcher.stop(timeout_s=1)
    assert len((tmp_path / ".enclave" / "logs" / "runtime.log").read_text().splitlines()) == 62


def test_stop_terminates_the_whole_group_and_is_idempotent(fx: Fixture, tmp_path: Path) -> None:
    fx.launcher.start(make_spec(tmp_path))
    runtime_pid, child_pid = fx.pids()
    fx.launcher.stop(timeout_s=5)
    assert fx.launcher.describe() is None
    assert not alive(runtime_pid)
    wait_for(lambda: not alive(child_pid))
    info = fx.launcher.last_exit()
    assert info is not None
    assert info.signal == "SIGTERM" and info.exit_code is None
    assert info.reason == "stopped by the supervisor: runtime killed by SIGTERM"
    fx.launcher.stop(timeout_s=1)  # no-op
    assert fx.launcher.last_exit() == info


def test_stop_kills_a_runtime_that_ignores_sigterm(fx: Fixture, tmp_path: Path) -> None:
    fx.launcher.start(make_spec(tmp_path, IGNORE_TERM="1"))
    runtime_pid, child_pid = fx.pids()
    fx.wait_ready()  # the SIGTERM handler is installed before the first line
    fx.launcher.stop(timeout_s=0.3)
    info = fx.launcher.last_exit()
    assert info is not None and info.signal == "SIGKILL"
    assert not alive(runtime_pid)
    wait_for(lambda: not alive(child_pid))


def test_a_killed_runtime_is_reported_and_its_group_killed(fx: Fixture, tmp_path: Path) -> None:
    fx.launcher.start(make_spec(tmp_path))
    runtime_pid, child_pid = fx.pids()
    fx.wait_ready()
    os.kill(runtime_pid, signal.SIGKILL)  # only the runtime: the child survives on its own
    wait_for(lambda: fx.launcher.describe() is None)
    info = fx.launcher.last_exit()
    assert info is not None
    assert (info.exit_code, info.signal) == (None, "SIGKILL")
    assert info.reason == "runtime killed by SIGKILL"
    assert info.log_tail[-1] == "ready" and len(info.log_tail) == 20
    assert info.timestamp.endswith("Z")
    wait_for(lambda: not alive(child_pid))  # the launcher killed the leftover group member
    assert info.as_json()["signal"] == "SIGKILL"


def test_exit_code_is_recorded(tmp_path: Path) -> None:
    launcher = ProcessLauncher(
        tmp_path / ".enclave",
        command=[sys.executable, "-c", "import sys; print('bye'); sys.exit(3)"],
        echo=io.StringIO(),
    )
    launcher.start(make_spec(tmp_path))
    wait_for(lambda: launcher.describe() is None)
    info = launcher.last_exit()
    assert info is not None
    assert (info.exit_code, info.signal, info.reason) == (3, None, "runtime exited with code 3")
    assert info.log_tail == ["bye"]


# The runtime's output as the launcher sees it: JSON log lines (one of the app's) and plain text.
RUNTIME_OUTPUT = [
    json.dumps(
        {"time": "2026-01-01T10:00:00.250+00:00", "level": "INFO", "msg": "boot", "stage": "kms"}
    ),
    json.dumps(
        {"time": "2026-01-01T10:00:00.500+00:00", "level": "INFO", "msg": "hi", "source": "app"}
    ),
    "Traceback (most recent call last):",
]


def test_echo_is_readable_with_readable_logs_while_the_file_keeps_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loguru import logger

    from enclave_core import log

    monkeypatch.setattr(log, "_echo_view", log._echo_view)  # restored afterwards
    script = "import sys; sys.stdout.write(sys.argv[1])"
    output = "".join(line + "\n" for line in RUNTIME_OUTPUT)
    for human, expected in ((False, RUNTIME_OUTPUT), (True, None)):
        log.configure_logging("INFO", human=human, stream=io.StringIO())
        echo = io.StringIO()
        state = tmp_path / ("text" if human else "json")
        launcher = ProcessLauncher(state, command=[sys.executable, "-c", script, output], echo=echo)
        launcher.start(make_spec(tmp_path))
        wait_for(lambda launcher=launcher: launcher.describe() is None)
        assert (state / "logs" / "runtime.log").read_text() == output  # JSON lines as written
        shown = echo.getvalue().splitlines()
        if expected is not None:
            assert shown == expected
        else:
            assert [line[12:] for line in shown] == [
                " INFO    runtime    boot  stage=kms",
                " INFO    app        hi",
                "         app        Traceback (most recent call last):",
            ]
    logger.remove()


def test_start_twice_is_refused_and_a_missing_program_is_a_launcher_error(
    fx: Fixture, tmp_path: Path
) -> None:
    fx.launcher.start(make_spec(tmp_path))
    with pytest.raises(LauncherError, match="already running"):
        fx.launcher.start(make_spec(tmp_path))
    broken = ProcessLauncher(tmp_path / ".enclave", command=[str(tmp_path / "no-such-program")])
    with pytest.raises(LauncherError, match="no-such-program"):
        broken.start(make_spec(tmp_path))
    assert broken.describe() is None


def test_addresses_and_default_command(tmp_path: Path) -> None:
    launcher = ProcessLauncher(tmp_path)
    assert launcher.enclave_address(7073) == "tcp://127.0.0.1:7073"
    assert isinstance(launcher, Launcher)
    config_path = str(tmp_path / "enclave.yaml")
    assert runtime_argv(tmp_path / "enclave.yaml") == [
        sys.executable,
        "-m",
        "enclave_core.cli.main",
        "runtime",
        "-c",
        config_path,
    ]


def test_hook_enclave_register_launcher(make_config: Callable[..., Any]) -> None:
    plugins = get_plugin_manager()
    config = make_config(launcher={"backend": "process", "options": {"log_lines": 7}})
    launcher = build_backend(config, plugins, "launcher")
    assert isinstance(launcher, ProcessLauncher)
    assert launcher.log_path == config.state_dir / "logs" / "runtime.log"
    with pytest.raises(marshmallow.ValidationError):
        ProcessLauncher.Options().load({"comand": ["x"]})
    with pytest.raises(marshmallow.ValidationError):
        ProcessLauncher.Options().load({"command": []})
    assert plugins.launcher.owner("process") == "process-launcher"
    assert plugins.launcher.get("process") is ProcessLauncher
