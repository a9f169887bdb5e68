"""run_supervisor for real: a subprocess supervising a fake runtime via the process launcher."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from enclave_plugins import process_launcher

from enclave_core.cli.supervisor_client import SupervisorClient
from enclave_core.config import Config
from enclave_core.errors import EnclaveError, StateConflict
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.supervisor.service import run_supervisor
from enclave_core.supervisor.token import read_token
from enclave_core.testing import dev_config_document, write_config
from tests.helpers import alive, wait_for

# Serves GET /health (control port) and GET /v1/enclave-info (public port); starts a child like
# the app, in its process group; appends "runtime_pid child_pid" to a file on every boot.
FAKE_RUNTIME = textwrap.dedent(
    """
    import json, os, subprocess, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    control_port, public_port, pid_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    BODIES = {
        (control_port, "/health"): {"status": "ready"},
        (public_port, "/v1/enclave-info"): {"name": "hello", "metrics": {"http_requests": 7}},
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            doc = BODIES.get((self.server.server_address[1], self.path))
            body = json.dumps(doc or {"title": "Not found"}).encode()
            self.send_response(200 if doc else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", p), Handler) for p in (control_port, public_port)]
    threading.Thread(target=servers[1].serve_forever, daemon=True).start()
    with open(pid_file, "a") as f:
        f.write(f"{os.getpid()} {child.pid}\\n")
    print(json.dumps({"msg": "fake runtime ready"}), flush=True)
    servers[0].serve_forever()
    """
)

SUPERVISOR = textwrap.dedent(
    """
    import json, sys
    from enclave_core.plugin.backends import plugins_for
    from enclave_core.config import load_config
    from enclave_core.log import configure_logging
    from enclave_core.supervisor.service import run_supervisor

    configure_logging(human=False)
    config = load_config(sys.argv[1])
    announce = lambda urls: print(json.dumps(urls), flush=True)
    sys.exit(run_supervisor(config, plugins_for(config), announce=announce))
    """
)


def post(url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=b"", method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def other_plugins() -> list[str]:
    """Every installed plugin except the process launcher (the others are not needed here)."""
    names = [ep.name for ep in metadata.entry_points(group="enclave")]
    return [name for name in names if name != "process-launcher"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    script = tmp_path / "fake_runtime.py"
    script.write_text(FAKE_RUNTIME)
    pid_file = tmp_path / "pids"
    doc = dev_config_document(plugins={"disable": other_plugins()})
    runtime = doc["runtime"]
    command = [
        sys.executable,
        str(script),
        str(runtime["control_port"]),
        str(runtime["port"]),
        str(pid_file),
    ]
    doc["launcher"] = {"backend": "process", "options": {"command": command}}
    doc["supervisor"]["watchdog"] = {
        "interval_s": 0.2,
        "backoff_initial_s": 0.3,
        "backoff_max_s": 2,
    }
    config = write_config(tmp_path, doc)
    stderr = (tmp_path / "supervisor.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", SUPERVISOR, str(config.path)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
    )
    info = {"proc": proc, "config": config, "pid_file": pid_file}
    info["log"] = tmp_path / "supervisor.log"
    try:
        yield info
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()
        assert proc.stdout is not None
        proc.stdout.close()
        for line in pid_file.read_text().split() if pid_file.exists() else []:
            if alive(int(line)):
                os.kill(int(line), signal.SIGKILL)


def booted(pid_file: Path) -> list[tuple[int, int]]:
    """Every boot of the fake runtime: (runtime pid, child pid)."""
    lines = pid_file.read_text().splitlines() if pid_file.exists() else []
    return [(int(a), int(b)) for a, b in (line.split() for line in lines)]


@pytest.mark.e2e
def test_supervisor_lifecycle(stack: dict[str, Any]) -> None:
    proc: subprocess.Popen[bytes] = stack["proc"]
    config: Config = stack["config"]
    base = f"http://{config.supervisor.listen}"
    client = SupervisorClient(config)

    assert proc.stdout is not None
    urls = json.loads(proc.stdout.readline())
    assert urls["supervisor"] == base
    assert urls["runtime"] == f"http://127.0.0.1:{config.runtime.port}"
    assert urls["ingress"] == f"http://{config.supervisor.ingress[0].listen}"
    assert urls["app"] == f"http://127.0.0.1:{config.app.port}"

    health = wait_for(lambda: (h := client.health())["status"] == "running" and h)
    assert health["restarts"] == 0 and health["enclave_cid"] == config.enclave.cid
    token_file = config.state_dir / "supervisor" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = read_token(config.state_dir)
    assert token is not None
    assert "enclave_up 1.0" in client.metrics().splitlines()
    assert "enclave_http_requests_total 7.0" in client.metrics().splitlines()
    info = client.enclave_info()
    assert info["name"] == "hello" and info["host"]["restarts"] == 0

    # Ingress reaches the runtime's public listener.
    with urllib.request.urlopen(urls["ingress"] + "/v1/enclave-info", timeout=10) as response:  # noqa: S310
        assert json.loads(response.read())["name"] == "hello"

    # Stop needs the token, then conflicts when repeated; start again.
    assert post(base + "/v1/stop", {})[0] == 401
    assert post(base + "/v1/stop", {"Authorization": "Bearer " + "0" * 64})[0] == 403
    first_runtime, first_child = booted(stack["pid_file"])[0]
    assert client.stop()["status"] == "stopped"
    assert not alive(first_runtime)
    wait_for(lambda: not alive(first_child))
    with pytest.raises(StateConflict):
        client.stop()
    assert post(base + "/v1/stop", {"Authorization": f"Bearer {token}"})[0] == 409
    client.start()
    wait_for(lambda: client.health()["status"] == "running")

    # kill -9 of the runtime: the watchdog notices, records the signal and restarts it.
    runtime, child = booted(stack["pid_file"])[-1]
    os.kill(runtime, signal.SIGKILL)
    health = wait_for(lambda: (h := client.health())["restarts"] == 1 and h)
    assert health["last_exit"]["signal"] == "SIGKILL"
    assert health["last_exit"]["reason"] == "runtime killed by SIGKILL"
    wait_for(lambda: not alive(child))  # its group went with it
    wait_for(lambda: client.health()["status"] == "running")
    assert len(booted(stack["pid_file"])) == 3

    # SIGTERM: everything stops within 10 s, exit code 0, no process left.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    pids = [pid for boot in booted(stack["pid_file"]) for pid in boot]
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5)
    with pytest.raises(EnclaveError, match="supervisor not reachable"):
        client.health()
    with socket.socket() as probe:  # the ingress port is free again (TIME_WAIT aside)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        host, port = config.supervisor.ingress[0].listen.rsplit(":", 1)
        probe.bind((host, int(port)))

    text = stack["log"].read_text()
    log = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    requests = [entry for entry in log if entry.get("msg") == "request"]
    assert {"method", "path", "status", "duration_ms"} <= set(requests[0])
    restarts = [entry for entry in log if entry.get("msg") == "restarting enclave"]
    assert restarts and restarts[0]["delay_s"] == 0.3
    assert "fake runtime ready" in stack["log"].read_text()  # the runtime's lines are echoed
    assert token not in stack["log"].read_text()


def test_a_taken_listen_address_fails_fast(make_config: Callable[..., Config]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        config = make_config(supervisor={"listen": listen, "ingress": []})
        plugins = get_plugin_manager(
            disable=[ep.name for ep in metadata.entry_points(group="enclave")],
            extra_plugins=[("test-process", process_launcher)],
        )
        expected = f"management API cannot listen on {listen}: Address already in use"
        with pytest.raises(EnclaveError, match=expected):
            run_supervisor(config, plugins)
