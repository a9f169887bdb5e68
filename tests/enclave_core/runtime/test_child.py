"""The app as a supervised child: environment, log relay, restarts, exit 3, stop, no orphans."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from enclave_core.config import Config
from enclave_core.runtime.child import AppSupervisor, app_environment
from enclave_core.runtime.childio import probe
from enclave_core.runtime.state import RuntimeState
from enclave_core.testing import free_port
from tests.helpers import alive, until

TOKEN = "5a" * 32
SECRET = "ab" * 32

APP = r"""
import json, os, pathlib, signal, socket, sys, time
out, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
with open(out / "starts", "a") as f:
    f.write(f"{os.getpid()}\n")
(out / "env.json").write_text(json.dumps(dict(os.environ)))
print("hello {braces} from the app", flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
if mode == "exit":
    sys.exit(7)
if mode == "sleep":
    time.sleep(60)
if mode == "http":
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503 if (out / "sick").exists() else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(os.environ["PORT"])))
srv.listen()
srv.settimeout(0.05)
while True:
    if mode == "exit-on-file" and (out / "quit").exists():
        (out / "quit").unlink()
        sys.exit(9)
    try:
        conn, _ = srv.accept()
        conn.close()
    except socket.timeout:
        pass
"""

RUNTIME = r"""
import asyncio, sys
import uvloop
from enclave_core.config import load_config
from enclave_core.runtime.child import AppSupervisor, app_environment
from enclave_core.runtime.state import RuntimeState

async def main():
    config = load_config(sys.argv[1])
    state = RuntimeState(config)
    state.mgmt_token = "00" * 32
    async def env():
        return {}
    supervisor = AppSupervisor(config, state, env)
    await supervisor.start()
    await asyncio.Event().wait()

uvloop.run(main())  # the event loop run_runtime uses
"""


@pytest.fixture
def app_config(tmp_path: Path, make_config: Callable[..., Config]) -> Callable[[str], Config]:
    (tmp_path / "app.py").write_text(APP)
    out = tmp_path / "out"
    out.mkdir()

    def factory(mode: str, **app: Any) -> Config:
        return make_config(
            app={"command": [sys.executable, "app.py", str(out), mode], "dir": ".", **app}
        )

    return factory


def out_dir(config: Config) -> Path:
    return Path(config.app.command[2])


def app_pids(config: Config) -> list[int]:
    starts = out_dir(config) / "starts"
    return [int(x) for x in starts.read_text().split()] if starts.exists() else []


def new_state(config: Config) -> RuntimeState:
    state = RuntimeState(config)
    state.mgmt_token = TOKEN
    state.stage = "app"
    return state


def supervise(
    config: Config,
    state: RuntimeState,
    scenario: Callable[[AppSupervisor], Awaitable[Any]],
    secrets: dict[str, str] | None = None,
    **options: Any,
) -> Any:
    async def provide() -> dict[str, str]:
        return dict(secrets or {})

    async def main() -> Any:
        supervisor = AppSupervisor(config, state, provide, **options)
        await supervisor.start()
        try:
            return await scenario(supervisor)
        finally:
            await supervisor.stop()

    return asyncio.run(main())


def test_app_gets_its_environment_and_its_lines_are_relogged(
    app_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENCLAVE_RUNTIME_ONLY", "leak")
    monkeypatch.setenv("KEEP_ME", "kept")
    config = app_config("serve", env={"GREETING": "hi"})
    state = new_state(config)
    records: list[dict[str, Any]] = []
    sink = logger.add(lambda m: records.append(dict(m.record)), level="INFO")

    async def scenario(supervisor: AppSupervisor) -> None:
        await until(lambda: state.health()[0] == 200)
        await until(lambda: any(r["extra"].get("stream") == "stderr" for r in records))

    try:
        supervise(config, state, scenario, secrets={"APP_SIGNING_KEY": SECRET, "DYN": "d"})
    finally:
        logger.remove(sink)
    env = json.loads((out_dir(config) / "env.json").read_text())
    assert env["APP_SIGNING_KEY"] == SECRET and env["DYN"] == "d"
    assert env["GREETING"] == "hi" and env["KEEP_ME"] == "kept"
    assert "ENCLAVE_RUNTIME_ONLY" not in env
    assert env["PORT"] == env["ENCLAVE_APP_PORT"] == str(config.app.port)
    assert env["ENCLAVE_MGMT_TOKEN"] == TOKEN
    assert env["ENCLAVE_API_URL"] == f"http://127.0.0.1:{config.runtime.app_api_port}"
    assert env["ENCLAVE_CPU_COUNT"] == str(config.enclave.cpu_count)
    app_lines = [
        (r["extra"]["stream"], r["message"]) for r in records if r["extra"].get("source") == "app"
    ]
    assert ("stdout", "hello {braces} from the app") in app_lines
    assert ("stderr", "a line on stderr") in app_lines
    assert all(
        TOKEN not in r["message"] and SECRET not in r["message"]
        for r in records
        if r["extra"].get("source") != "app"
    )


def test_the_app_is_told_the_enclaves_cpu_count(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    # gunicorn's gunicorn.conf.py (enclave init --template falcon) sizes its workers with it.
    monkeypatch.setenv("ENCLAVE_CPU_COUNT", "64")  # the runtime's own environment does not leak
    config = make_config(enclave={"cpu_count": 4}, app={"env": {"ENCLAVE_CPU_COUNT": "99"}})
    env = app_environment(config, new_state(config), {"ENCLAVE_CPU_COUNT": "7"})
    assert env["ENCLAVE_CPU_COUNT"] == "4"  # neither app.env nor a secret overrides it


def test_ready_app_that_exits_is_restarted(app_config: Callable[..., Config]) -> None:
    config = app_config("exit-on-file")
    state = new_state(config)
    seen: list[Any] = []

    async def scenario(supervisor: AppSupervisor) -> None:
        await until(lambda: state.health()[0] == 200)
        first = supervisor.pid
        (out_dir(config) / "quit").touch()
        await until(lambda: state.app_problem is not None)
        seen.append(state.health())
        seen.append(state.app_unavailable())
        await until(lambda: state.health()[0] == 200)
        seen.append(first != supervisor.pid)

    supervise(config, state, scenario, backoff_initial_s=0.1)
    assert seen[0] == (
        503,
        {"status": "degraded", "error": "app exited with code 9; restarting in 0.1s"},
    )
    assert seen[1] == "app exited with code 9; restarting in 0.1s"
    assert seen[2] is True
    assert len(app_pids(config)) == 2


def test_first_ready_runs_once_however_often_the_app_restarts(
    app_config: Callable[..., Config],
) -> None:
    """The runtime retires a migrated-from key here: once, when the app first answers, and
    before /health says ready (a supervisor waiting for ready sees the key retired)."""
    config = app_config("exit-on-file")
    state = new_state(config)
    calls: list[bool] = []

    async def first_ready() -> None:
        calls.append(state.health()[0] == 200)

    async def scenario(supervisor: AppSupervisor) -> None:
        await until(lambda: state.health()[0] == 200)
        first = supervisor.pid
        (out_dir(config) / "quit").touch()
        await until(lambda: supervisor.pid not in (None, first) and state.health()[0] == 200)

    supervise(config, state, scenario, backoff_initial_s=0.1, on_first_ready=first_ready)
    assert len(app_pids(config)) == 2
    assert calls == [False]  # once, and not yet ready when it ran


def test_first_ready_never_runs_for_an_app_that_never_comes_up(
    app_config: Callable[..., Config],
) -> None:
    config = app_config("exit")
    state = new_state(config)
    calls: list[bool] = []

    async def first_ready() -> None:
        calls.append(True)

    async def scenario(supervisor: AppSupervisor) -> int:
        return await supervisor.wait()

    code = supervise(
        config, state, scenario, backoff_initial_s=0.05, max_failures=2, on_first_ready=first_ready
    )
    assert code == 3 and calls == []


def test_health_path_gates_readiness_and_reports_degraded(
    app_config: Callable[..., Config],
) -> None:
    config = app_config("http", health_path="/health")
    state = new_state(config)
    sick = out_dir(config) / "sick"
    sick.touch()
    seen: list[Any] = []

    async def scenario(supervisor: AppSupervisor) -> None:
        await until(lambda: bool(app_pids(config)))
        await asyncio.sleep(0.3)  # answering 503: up, but not ready
        seen.append(state.health())
        sick.unlink()
        await until(lambda: state.health()[0] == 200)
        sick.touch()
        await until(lambda: state.app_problem is not None)
        seen.append(state.health())
        seen.append(state.app_unavailable())
        sick.unlink()
        await until(lambda: state.health()[0] == 200)

    supervise(config, state, scenario, health_interval_s=0.05)
    assert seen[0] == (503, {"status": "initializing", "stage": "app"})
    assert seen[1] == (
        503,
        {"status": "degraded", "error": "app health check failed: GET /health answered 503"},
    )
    assert seen[2] is None  # still proxied: the app answers, just not healthily
    assert len(app_pids(config)) == 1


def test_repeated_failures_back_off_then_exit_3(app_config: Callable[..., Config]) -> None:
    config = app_config("exit")
    state = new_state(config)
    problems: list[str] = []

    async def scenario(supervisor: AppSupervisor) -> int:
        waiter = asyncio.create_task(supervisor.wait())
        while not waiter.done():
            if state.app_problem and state.app_problem not in problems:
                problems.append(state.app_problem)
            await asyncio.sleep(0.01)
        return waiter.result()

    code = supervise(config, state, scenario, backoff_initial_s=0.2, max_failures=3)
    assert code == 3 and state.exit_code == 3
    assert problems[:2] == [
        "app exited with code 7; restarting in 0.2s",
        "app exited with code 7; restarting in 0.4s",
    ]
    assert (
        state.app_problem == "app exited with code 7; it failed 3 times in a row, the runtime exits"
    )
    assert len(app_pids(config)) == 3


def test_app_that_never_listens_counts_as_failed(app_config: Callable[..., Config]) -> None:
    config = app_config("sleep")
    state = new_state(config)

    async def scenario(supervisor: AppSupervisor) -> int:
        return await supervisor.wait()

    assert supervise(config, state, scenario, ready_timeout_s=0.5, max_failures=1) == 3
    assert state.app_problem is not None and "did not become ready" in state.app_problem
    assert not alive(app_pids(config)[0])


def test_missing_command_is_reported(make_config: Callable[..., Config]) -> None:
    config = make_config(app={"command": ["no-such-app-binary-xyz"]})
    state = new_state(config)

    async def scenario(supervisor: AppSupervisor) -> int:
        return await supervisor.wait()

    assert supervise(config, state, scenario, max_failures=1) == 3
    assert state.app_problem is not None and "no-such-app-binary-xyz" in state.app_problem


@pytest.mark.parametrize(
    ("mode", "signal_name"), [("serve", "SIGTERM"), ("ignore-term", "SIGKILL")]
)
def test_stop_terminates_then_kills(
    app_config: Callable[..., Config], mode: str, signal_name: str
) -> None:
    config = app_config(mode)
    state = new_state(config)
    procs: list[Any] = []

    async def scenario(supervisor: AppSupervisor) -> None:
        await until(lambda: state.app_up)
        procs.append(supervisor._proc)
        await supervisor.stop()

    supervise(config, state, scenario, stop_grace_s=0.5)
    assert procs[0].returncode == -getattr(signal, signal_name)
    assert len(app_pids(config)) == 1  # not restarted after a stop
    assert not state.app_up


def test_no_orphan_after_the_runtime_is_killed(
    app_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = app_config("serve")
    assert config.path is not None
    runtime = subprocess.Popen([sys.executable, "-c", RUNTIME, str(config.path)])
    try:
        deadline = time.monotonic() + 30
        while not app_pids(config):
            assert time.monotonic() < deadline and runtime.poll() is None
            time.sleep(0.05)
        pid = app_pids(config)[0]
        assert alive(pid)
        runtime.send_signal(signal.SIGKILL)
        runtime.wait(10)
        deadline = time.monotonic() + 10
        while alive(pid):
            assert time.monotonic() < deadline, "the app outlived its runtime"
            time.sleep(0.05)
    finally:
        if runtime.poll() is None:
            runtime.kill()
            runtime.wait()
        for leftover in app_pids(config):  # only matters when the assertion above failed
            if alive(leftover):
                os.kill(leftover, signal.SIGKILL)


def test_probe_checks_port_and_health_path() -> None:
    async def scenario() -> list[str | None]:
        status = {"code": b"500"}

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 " + status["code"] + b" X\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            results = [await probe(port, "/health"), await probe(port, None)]
            status["code"] = b"204"
            results.append(await probe(port, "/health"))
        finally:
            server.close()
            await server.wait_closed()
        results.append(await probe(free_port(), None))
        return results

    failing, port_only, healthy, closed = asyncio.run(scenario())
    assert failing == "GET /health answered 500"
    assert port_only is None and healthy is None
    assert closed is not None and "does not accept connections" in closed
