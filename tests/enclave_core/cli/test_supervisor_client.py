"""The CLI's supervisor client when things go wrong (the happy path runs in test_service)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from enclave_core.cli.supervisor_client import SupervisorClient
from enclave_core.config import Config
from enclave_core.errors import EnclaveError, StateConflict
from enclave_core.supervisor.token import ensure_token


class FakeSupervisor:
    """Answers every request with the (status, JSON body) set by the test; records headers."""

    def __init__(self, port: int) -> None:
        self.answer: tuple[int, Any] = (200, {"status": "running"})
        self.requests: list[tuple[str, str, str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                fake.requests.append((self.command, self.path, self.headers["Authorization"]))
                status, doc = fake.answer
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _reply  # noqa: N815 - http.server's names

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake(config: Config) -> Iterator[FakeSupervisor]:
    server = FakeSupervisor(int(config.supervisor.listen.rsplit(":", 1)[1]))
    yield server
    server.close()


def test_not_running_is_a_clear_error(config: Config) -> None:
    client = SupervisorClient(config)
    assert client.base_url == f"http://{config.supervisor.listen}"
    with pytest.raises(EnclaveError) as caught:
        client.health()
    assert str(caught.value).startswith(
        f"supervisor not reachable at http://{config.supervisor.listen}: is `enclave dev` or "
        "`enclave supervisor` running?"
    )


def test_mutating_calls_need_the_token_file(config: Config, fake: FakeSupervisor) -> None:
    with pytest.raises(EnclaveError, match="no supervisor token at .*supervisor/token"):
        SupervisorClient(config).stop()
    assert fake.requests == []
    token = ensure_token(config.state_dir)
    assert SupervisorClient(config).stop() == {"status": "running"}
    assert fake.requests == [("POST", "/v1/stop", f"Bearer {token}")]


def test_health_returns_503_bodies_and_errors_carry_the_description(
    config: Config, fake: FakeSupervisor
) -> None:
    ensure_token(config.state_dir)
    client = SupervisorClient(config)
    fake.answer = (503, {"status": "stopped", "restarts": 0})
    assert client.health() == {"status": "stopped", "restarts": 0}
    fake.answer = (409, {"title": "Conflict", "description": "the enclave is already stopped"})
    with pytest.raises(StateConflict, match="^the enclave is already stopped$"):
        client.stop()
    fake.answer = (503, {"title": "Runtime unavailable", "description": "runtime is down"})
    with pytest.raises(EnclaveError, match=r"GET /v1/enclave-info failed \(503\): runtime is down"):
        client.enclave_info()
    fake.answer = (403, {"title": "Forbidden", "description": "the supervisor token is wrong"})
    with pytest.raises(EnclaveError, match="token is wrong") as caught:
        client.start()
    assert caught.value.http_status == 403


def test_wildcard_listen_is_reached_on_loopback(make_config: Callable[..., Config]) -> None:
    config = make_config(supervisor={"listen": "0.0.0.0:9443"})
    assert SupervisorClient(config).base_url == "http://127.0.0.1:9443"
