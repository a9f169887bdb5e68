"""run_runtime end to end: real local plugins, real processes, every listener on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from enclave_core.config import Config
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.runtime.server import serve_runtime
from tests.doubles.memory_backends import DOUBLES_CONFIG, DoublesPlugin
from tests.helpers import alive

APP = r"""
import json, os, pathlib, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
pathlib.Path(sys.argv[1]).write_text(json.dumps(dict(os.environ, APP_PID=str(os.getpid()))))
if len(sys.argv) > 2 and sys.argv[2] == "exit":
    sys.exit(4)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.environ['GREETING']} from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

RUNTIME = r"""
import sys
from enclave_core.plugin.backends import plugins_for
from enclave_core.config import load_config
from enclave_core.log import configure_logging
from enclave_core.runtime.server import run_runtime

configure_logging(human=False)
config = load_config(sys.argv[1])
sys.exit(run_runtime(config, plugins_for(config)))
"""


def request(
    url: str, *, method: str = "GET", data: bytes | None = None, token: str | None = None
) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:")
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback http only
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"runtime exited with {proc.returncode}"
        try:
            if request(url)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "runtime never became ready"
        time.sleep(0.1)


@pytest.fixture
def e2e_config(tmp_path: Path, make_config: Callable[..., Config]) -> Config:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text(APP)
    env_file = tmp_path / "app-env.json"
    return make_config(
        app={
            "dir": "app",
            "command": [sys.executable, "app.py", str(env_file)],
            "env": {"GREETING": "hello"},
        },
        secrets={"static": [{"name": "signing_key", "env_var": "APP_SIGNING_KEY"}]},
    )


def start_runtime(config: Config, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-c", RUNTIME, str(config.path)], stdout=sink, stderr=sink
        )


def stop_runtime(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def app_env(config: Config) -> dict[str, str]:
    return json.loads((config.base_dir / "app-env.json").read_text())


def test_runtime_end_to_end_with_local_backends(e2e_config: Config, tmp_path: Path) -> None:
    rt = e2e_config.runtime
    public = f"http://127.0.0.1:{rt.port}"
    api = f"http://127.0.0.1:{rt.app_api_port}"
    log = tmp_path / "runtime.log"
    proc = start_runtime(e2e_config, log)
    try:
        wait_ready(f"{public}/health", proc)
        env = app_env(e2e_config)
        secret, token = env["APP_SIGNING_KEY"], env["ENCLAVE_MGMT_TOKEN"]
        assert len(secret) == 64 and int(secret, 16) >= 0
        # Everything that is not the runtime's own is proxied to the app.
        assert request(f"{public}/greet?x=1") == (200, b"hello from /greet?x=1")
        assert request(f"http://127.0.0.1:{rt.control_port}/health") == (
            200,
            b'{"status": "ready"}',
        )
        info = json.loads(request(f"{public}/v1/enclave-info")[1])
        assert len(info["pcr0"]) == 96 and info["kms_key_id"] and info["dynamic_secrets"] == 0
        status, document = request(f"{public}/enclave/attestation?nonce=0011aabb")
        assert status == 200 and base64.b64decode(document, validate=True)
        assert request(f"{public}/enclave/attestation?nonce=zz")[0] == 400
        # The app API: token required, objects encrypted at rest.
        plaintext = b"visits=41; a plaintext that must not reach the disk"
        assert request(f"{api}/v1/storage/counter", method="PUT", data=plaintext)[0] == 401
        assert (
            request(f"{api}/v1/storage/counter", method="PUT", data=plaintext, token="0" * 64)[0]
            == 403
        )
        assert (
            request(f"{api}/v1/storage/counter", method="PUT", data=plaintext, token=token)[0]
            == 201
        )
        # Nothing between the client and the route normalises the path: ``{key:path}`` gets
        # ``../x``, whose '..' segment the key's validation refuses.
        assert request(f"{api}/v1/storage/../x", method="PUT", data=b"x", token=token)[0] == 400
        body = json.dumps({"value": "dyn-value-123", "env_var": "DYN_SECRET"}).encode()
        assert request(f"{api}/v1/secrets/dyn", method="PUT", data=body, token=token)[0] == 201
        info = json.loads(request(f"{public}/v1/enclave-info")[1])
        assert info["metrics"]["storage_writes"] == 2 and info["dynamic_secrets"] == 1
        assert stop_runtime(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not alive(int(env["APP_PID"]))  # stopped with the runtime
    with pytest.raises(OSError):
        request(f"http://127.0.0.1:{e2e_config.app.port}/")
    stored = [p.read_bytes() for p in e2e_config.state_dir.rglob("*") if p.is_file()]
    assert stored and not any(plaintext in b or secret.encode() in b for b in stored)
    assert not any(b"dyn-value-123" in b for b in stored)
    logged = log.read_bytes()
    assert secret.encode() not in logged and token.encode() not in logged
    assert all(json.loads(line) for line in logged.splitlines())

    # A second boot decrypts the same static secret and the stored object survives.
    proc = start_runtime(e2e_config, log)
    try:
        wait_ready(f"{public}/health", proc)
        env = app_env(e2e_config)
        assert env["APP_SIGNING_KEY"] == secret and env["DYN_SECRET"] == "dyn-value-123"  # noqa: S105 - a test value
        assert env["ENCLAVE_MGMT_TOKEN"] != token
        got = request(f"{api}/v1/storage/counter", token=env["ENCLAVE_MGMT_TOKEN"])
        assert got == (200, plaintext)
        assert stop_runtime(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def doubles_config(make_config: Callable[..., Config], tmp_path: Path, **extra: Any) -> Config:
    (tmp_path / "app.py").write_text(APP)
    return make_config(
        **DOUBLES_CONFIG,
        **extra,
        app={"command": [sys.executable, "app.py", str(tmp_path / "app-env.json"), "exit"]},
    )


def test_runtime_returns_3_when_the_app_keeps_failing(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = doubles_config(make_config, tmp_path)
    plugins = get_plugin_manager(extra_plugins=[("test-doubles", DoublesPlugin())])
    code = asyncio.run(
        asyncio.wait_for(
            serve_runtime(
                config, plugins, supervisor_options={"backoff_initial_s": 0.05, "max_failures": 2}
            ),
            60,
        )
    )
    assert code == 3


def test_degraded_boot_keeps_serving_health(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = doubles_config(make_config, tmp_path, mode="production", launcher={"backend": "x"})
    plugins = get_plugin_manager(extra_plugins=[("test-doubles", DoublesPlugin())])
    control = f"http://127.0.0.1:{config.runtime.control_port}/health"
    public = f"http://127.0.0.1:{config.runtime.port}/"

    async def scenario() -> tuple[Any, ...]:
        stop = asyncio.Event()
        task = asyncio.create_task(serve_runtime(config, plugins, stop=stop))
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = await asyncio.to_thread(request, control)
                if status == 503 and b"degraded" in body:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        proxied = await asyncio.to_thread(request, public)
        stop.set()
        return json.loads(body), proxied, await task

    body, proxied, code = asyncio.run(scenario())
    assert body["status"] == "degraded" and "kms_key" in body["error"]
    assert proxied[0] == 503
    assert code == 0
    assert not (tmp_path / "app-env.json").exists()  # the app never started
