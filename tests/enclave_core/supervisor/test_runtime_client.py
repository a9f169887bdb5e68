"""The supervisor's runtime client against a real HTTP server playing the runtime."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from enclave_core.config import Config
from enclave_core.supervisor.runtime_client import Probe, RuntimeClient, RuntimeUnavailable
from enclave_core.testing import free_port
from tests.enclave_core.supervisor.test_watchdog import FakeLauncher


class Runtime:
    """One HTTP server answering every path with the (status, body) set by the test."""

    def __init__(self, port: int) -> None:
        self.answer: tuple[int, bytes] = (200, b'{"status":"ready"}')
        self.paths: list[str] = []
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                runtime.paths.append(self.path)
                status, body = runtime.answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def setup(make_config: Callable[..., Config]) -> Iterator[tuple[RuntimeClient, Runtime, Runtime]]:
    config = make_config()
    control = Runtime(config.runtime.control_port)
    public = Runtime(config.runtime.port)
    client = RuntimeClient(FakeLauncher(), config, timeout_s=2)
    yield client, control, public
    control.close()
    public.close()


def test_health_probe_states(setup: tuple[RuntimeClient, Runtime, Runtime]) -> None:
    client, control, public = setup
    assert client.health() == Probe(True, "ready")
    assert control.paths == ["/health"] and public.paths == []
    control.answer = (503, b'{"status":"initializing","stage":"kms_key"}')
    assert client.health() == Probe(False, "initializing", "kms_key")
    control.answer = (503, b'{"status":"degraded","error":"app exited with code 1"}')
    assert client.health() == Probe(False, "degraded", "app exited with code 1")
    control.answer = (200, b"not json")
    assert client.health().status == "invalid"
    control.answer = (500, b'{"status":"ready"}')  # ready must come with 200
    assert client.health().ok is False
    control.close()
    probe = client.health()
    assert (probe.ok, probe.status, probe.detail) == (False, "unreachable", "connection refused")


def test_enclave_info(setup: tuple[RuntimeClient, Runtime, Runtime]) -> None:
    client, control, public = setup
    public.answer = (200, json.dumps({"name": "hello", "metrics": {"http_requests": 2}}).encode())
    assert client.enclave_info() == {"name": "hello", "metrics": {"http_requests": 2}}
    assert public.paths == ["/v1/enclave-info"] and client.public_scheme == "http"
    public.answer = (503, b'{"status":"initializing"}')
    with pytest.raises(RuntimeUnavailable, match="answered HTTP 503"):
        client.enclave_info()


def test_enclave_info_unreachable(make_config: Callable[..., Config]) -> None:
    config = make_config(runtime={"port": free_port()})
    client = RuntimeClient(FakeLauncher(), config)
    with pytest.raises(RuntimeUnavailable, match=f"127.0.0.1:{config.runtime.port} is not reach"):
        client.enclave_info()
