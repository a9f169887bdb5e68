"""End to end: `enclave dev` runs the supervisor, the runtime and the example app for real."""

from __future__ import annotations

import http.client as httpclient
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import DevStack, http, make_stack, processes_mentioning
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[DevStack]:
    yield from make_stack(tmp_path / "hello").running()


def auth(env: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['ENCLAVE_MGMT_TOKEN']}"}


def test_request_through_ingress_reaches_the_app(stack: DevStack) -> None:
    greeting = stack.greeting()
    assert "Hello from Simple Enclave" in greeting
    assert "secret present: yes" in greeting
    health = stack.health()
    assert health["status"] == "running"
    assert health["restarts"] == 0
    status, _, body = http("GET", stack.ingress_url + "/health")
    assert (status, json.loads(body)) == (200, {"status": "ready"})  # the runtime's own
    status, _, body = http("GET", stack.ingress_url + "/v1/enclave-info")
    info = json.loads(body)
    assert status == 200 and info["name"] == "hello" and len(info["pcr0"]) == 96
    assert set(info["metrics"]) >= {"http_requests", "storage_writes", "kms_operations"}


def test_secret_and_stored_objects_survive_a_restart(stack: DevStack) -> None:
    env = stack.app_env()
    secret = env["APP_SIGNING_KEY"]
    assert len(secret) == 64 and secret == secret.lower()
    int(secret, 16)
    first = stack.app_json()["visits"]
    assert stack.app_json()["visits"] == first + 1
    before_restart = first + 1
    status, _, _ = http(
        "PUT", stack.app_api_url + "/v1/storage/notes/a.txt", b"kept across restarts", auth(env)
    )
    assert status == 201

    assert stack.supervisor_post("/v1/stop")[0] == 200
    wait_for(lambda: stack.health()["status"] == "stopped")
    assert stack.supervisor_post("/v1/stop")[0] == 409
    assert stack.supervisor_post("/v1/start")[0] == 200
    wait_for(lambda: "Hello" in stack.greeting(), timeout=60)

    env2 = stack.app_env()
    assert env2["APP_SIGNING_KEY"] == secret
    assert env2["ENCLAVE_MGMT_TOKEN"] != env["ENCLAVE_MGMT_TOKEN"]  # new every boot
    # The count kept in encrypted storage carries on (readiness polls visit "/" too).
    assert stack.app_json()["visits"] > before_restart
    status, _, body = http("GET", stack.app_api_url + "/v1/storage/notes/a.txt", None, auth(env2))
    assert (status, body) == (200, b"kept across restarts")


def test_watchdog_repairs_a_killed_runtime_with_backoff(stack: DevStack) -> None:
    backoff = stack.document["supervisor"]["watchdog"]["backoff_initial_s"]
    for expected_restarts in (1, 2):
        pid = stack.runtime_pid()
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        health = wait_for(
            lambda n=expected_restarts: (h := stack.health())["restarts"] == n and h, timeout=30
        )
        assert health["last_exit"]["signal"] == "SIGKILL"
        wait_for(lambda: "Hello" in stack.greeting(), timeout=60)
        assert time.monotonic() - killed_at >= backoff
        assert stack.runtime_pid() != pid
    lines = [json.loads(x) for x in stack.stderr_path.read_text().splitlines() if x.startswith("{")]
    delays = [line["delay_s"] for line in lines if "delay_s" in line]
    assert delays[:2] == [backoff, backoff * 2], delays


def test_bad_input_is_refused_and_changes_nothing(stack: DevStack) -> None:
    env = stack.app_env()
    api = stack.app_api_url
    assert http("PUT", api + "/v1/storage/k", b"v1", auth(env))[0] == 201
    before = sorted(
        p.read_bytes() for p in (stack.folder / ".enclave" / "storage").rglob("*") if p.is_file()
    )

    cases = [
        ("PUT", "/v1/storage/k", b"x", {}, 401),
        ("PUT", "/v1/storage/k", b"x", {"Authorization": "Bearer wrong"}, 403),
        ("PUT", "/v1/storage/..%2Fescape", b"x", auth(env), 400),
        ("PUT", "/v1/storage/a/../k", b"x", auth(env), 400),
        ("PUT", "/v1/secrets/s1", b"{not json", auth(env), 400),
        ("PUT", "/v1/storage/k", b"x", {**auth(env), "If-Match": '"stale"'}, 412),
        ("PUT", "/v1/storage/k", b"x", {**auth(env), "If-None-Match": "*"}, 412),
        ("GET", "/v1/storage/missing", None, auth(env), 404),
    ]
    for method, path, body, headers, expected in cases:
        status, _, answer = http(method, api + path, body, headers)
        assert status == expected, (path, status, answer)
        error = json.loads(answer)
        assert set(error) == {"title", "description"}, error
        assert "Traceback" not in answer.decode()

    # A body over the 10 MiB cap is refused from its Content-Length, after its first bytes and
    # long before the whole body is sent.
    host, port = api.removeprefix("http://").split(":")
    conn = httpclient.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("PUT", "/v1/storage/k")
    conn.putheader("Authorization", auth(env)["Authorization"])
    conn.putheader("Content-Length", str(10 * 1024 * 1024 + 1))
    conn.endheaders(b"x" * 65536)
    response = conn.getresponse()
    assert response.status == 413
    assert set(json.loads(response.read())) == {"title", "description"}
    conn.close()

    after = sorted(
        p.read_bytes() for p in (stack.folder / ".enclave" / "storage").rglob("*") if p.is_file()
    )
    assert after == before
    assert http("GET", api + "/v1/storage/k", None, auth(env))[2] == b"v1"


def test_state_directory_never_holds_a_plaintext(stack: DevStack) -> None:
    env = stack.app_env()
    marker = b"plaintext-marker-5b1d9e"
    assert http("PUT", stack.app_api_url + "/v1/storage/doc", marker, auth(env))[0] == 201
    dynamic = json.dumps({"value": "dynamic-secret-value-77", "env_var": "DYN"}).encode()
    assert http("PUT", stack.app_api_url + "/v1/secrets/dyn", dynamic, auth(env))[0] == 201
    secret_hex = env["APP_SIGNING_KEY"].encode()
    needles = [marker, b"dynamic-secret-value-77", secret_hex, bytes.fromhex(secret_hex.decode())]
    for path in (stack.folder / ".enclave").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"{path} holds a plaintext"


def test_dev_stops_everything_within_ten_seconds(tmp_path: Path) -> None:
    dev = make_stack(tmp_path / "stopme")
    dev.start()
    try:
        runtime = dev.runtime_pid()
        app = dev.app_pid()
        elapsed = dev.stop()
        assert elapsed < 10, elapsed
        assert dev.process is not None and dev.process.returncode == 0
        for pid in (runtime, app):
            assert (
                not Path(f"/proc/{pid}").exists()
                or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
            )
        assert processes_mentioning(str(dev.folder)) == []
    finally:
        dev.kill_leftovers()
