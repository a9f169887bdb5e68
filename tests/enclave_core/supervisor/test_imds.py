"""The IMDS forwarder in front of a fake IMDS (threaded http.server): IMDSv2 only, few paths."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore.utils import InstanceMetadataFetcher

from enclave_core.supervisor.imds import DEFAULT_TARGET, ImdsForwarder, imds_target
from enclave_core.testing import free_port
from tests.enclave_core.supervisor.egress_helpers import LogRecords
from tests.helpers import LoopThread

ROLE = "enclave-role"
TOKEN = "fake-imds-session-token"  # noqa: S105 - a test value
CREDENTIALS = {
    "Code": "Success",
    "Type": "AWS-HMAC",
    "AccessKeyId": "ASIAFAKEFAKEFAKE",
    "SecretAccessKey": "fake-secret",
    "Token": "fake-session",
    "Expiration": "2099-01-01T00:00:00Z",
}
ROLES_PATH = "/latest/meta-data/iam/security-credentials/"


@dataclass
class Seen:
    """One request the fake IMDS received."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class FakeImds(ThreadingHTTPServer):
    """TEST-ONLY IMDS: a token on PUT, the role and its credentials on GET with that token."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[Seen] = []


class _Handler(BaseHTTPRequestHandler):
    server: FakeImds
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: bytes) -> None:
        self.server.seen.append(Seen(self.command, self.path, dict(self.headers.items())))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "keep-alive")  # the forwarder must turn this into close
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        ok = self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        )
        self._answer(200 if ok else 400, TOKEN.encode() if ok else b"bad")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self._answer(401, b"")
        elif self.path == ROLES_PATH:
            self._answer(200, ROLE.encode())
        elif self.path == ROLES_PATH + ROLE:
            self._answer(200, json.dumps(CREDENTIALS).encode())
        elif self.path == "/latest/meta-data/placement/availability-zone/":
            self._answer(200, b"eu-west-1a")
        else:
            self._answer(404, b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[FakeImds]:
    server = FakeImds()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def forwarder(fake: FakeImds) -> Iterator[ImdsForwarder]:
    loop = LoopThread()
    target = f"tcp://127.0.0.1:{fake.server_address[1]}"
    service = ImdsForwarder(f"tcp://127.0.0.1:{free_port()}", target, head_timeout_s=2.0)
    loop.run(service.start())
    try:
        yield service
    finally:
        loop.run(service.close())
        loop.close()


def request(
    forwarder: ImdsForwarder, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    port = int(forwarder.bound.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.headers.items()), response.read()
    finally:
        connection.close()


def token_headers() -> dict[str, str]:
    return {"X-aws-ec2-metadata-token": TOKEN}


def test_the_token_put_is_forwarded(forwarder: ImdsForwarder, fake: FakeImds) -> None:
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
    status, headers, body = request(forwarder, "PUT", "/latest/api/token", ttl)
    assert (status, body) == (200, TOKEN.encode())
    assert headers["Connection"] == "close"
    [seen] = fake.seen
    assert (seen.method, seen.path) == ("PUT", "/latest/api/token")
    assert seen.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    assert seen.headers["Host"] == f"127.0.0.1:{fake.server_address[1]}"
    assert seen.headers["Connection"] == "close"


def test_a_get_without_a_token_is_refused_here_with_401(
    forwarder: ImdsForwarder, fake: FakeImds
) -> None:
    with LogRecords() as records:
        status, _headers, body = request(forwarder, "GET", ROLES_PATH)
    assert status == 401
    assert b"IMDSv2 only" in body
    assert fake.seen == []  # never forwarded
    [refused] = records.named("imds refused")
    assert refused["status"] == 401


def test_credentials_with_a_token_are_forwarded(forwarder: ImdsForwarder, fake: FakeImds) -> None:
    assert request(forwarder, "GET", ROLES_PATH, token_headers())[::2] == (200, ROLE.encode())
    status, _headers, body = request(forwarder, "GET", ROLES_PATH + ROLE, token_headers())
    assert status == 200 and json.loads(body) == CREDENTIALS
    assert [(s.method, s.path) for s in fake.seen] == [
        ("GET", ROLES_PATH),
        ("GET", ROLES_PATH + ROLE),
    ]
    assert fake.seen[1].headers["X-aws-ec2-metadata-token"] == TOKEN


def test_imds_answers_pass_through_unchanged(forwarder: ImdsForwarder, fake: FakeImds) -> None:
    status, _headers, _body = request(forwarder, "GET", ROLES_PATH + "other", token_headers())
    assert status == 404  # the fake's own answer
    headers = {"X-aws-ec2-metadata-token": "wrong"}
    assert request(forwarder, "GET", ROLES_PATH, headers)[0] == 401  # IMDS's 401 this time
    assert len(fake.seen) == 2


@pytest.mark.parametrize(
    "path",
    [
        "/latest/meta-data/ami-id",
        "/latest/user-data",
        "/latest/meta-data/iam/info",
        "/latest/meta-data/iam/security-credentials/../../../user-data",
        "/latest/meta-data/iam/security-credentials/..",
        "/latest/meta-data/iam/security-credentials/role?x=1",
        "/latest/api/token",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    ],
)
def test_other_paths_are_refused_with_403(
    forwarder: ImdsForwarder, fake: FakeImds, path: str
) -> None:
    assert request(forwarder, "GET", path, token_headers())[0] == 403
    assert fake.seen == []


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("POST", ROLES_PATH, token_headers(), 405),
        ("DELETE", "/latest/api/token", {}, 405),
        ("PUT", "/latest/api/token", {}, 400),  # no TTL
        (
            "PUT",
            "/latest/meta-data/iam/security-credentials/",
            {"X-aws-ec2-metadata-token-ttl-seconds": "60"},
            403,
        ),  # noqa: E501
        ("GET", ROLES_PATH, {**token_headers(), "Content-Length": "3"}, 400),  # a body
    ],
)
def test_other_requests_are_refused(
    forwarder: ImdsForwarder,
    fake: FakeImds,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
) -> None:
    assert request(forwarder, method, path, headers)[0] == status
    assert fake.seen == []


def test_botocore_fetches_the_role_credentials_through_the_forwarder(
    forwarder: ImdsForwarder, fake: FakeImds, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    url = "http://" + forwarder.bound.removeprefix("tcp://")
    fetcher = InstanceMetadataFetcher(timeout=5, num_attempts=1, base_url=url)
    credentials = fetcher.retrieve_iam_role_credentials()
    assert credentials["access_key"] == CREDENTIALS["AccessKeyId"]
    assert credentials["role_name"] == ROLE
    assert [s.method for s in fake.seen] == ["PUT", "GET", "GET"]


def test_an_unreachable_imds_is_answered_502() -> None:
    loop = LoopThread()
    service = ImdsForwarder(f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
    loop.run(service.start())
    try:
        assert request(service, "GET", ROLES_PATH, token_headers())[0] == 502
    finally:
        loop.run(service.close())
        loop.close()


def test_a_slow_request_is_cut(fake: FakeImds) -> None:
    loop = LoopThread()
    target = f"tcp://127.0.0.1:{fake.server_address[1]}"
    service = ImdsForwarder(f"tcp://127.0.0.1:{free_port()}", target, head_timeout_s=0.3)
    loop.run(service.start())
    try:
        port = int(service.bound.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert fake.seen == []
    finally:
        loop.run(service.close())
        loop.close()


def test_the_target_comes_from_the_environment_unless_it_loops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", raising=False)
    assert imds_target(8002) == DEFAULT_TARGET == "tcp://169.254.169.254:80"
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9999/")
    assert imds_target(8002) == "tcp://127.0.0.1:9999"
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://[::1]:9999")
    assert imds_target(8002) == "tcp://[::1]:9999"
    for looping in ("http://127.0.0.1:8002", "http://localhost:8002", "https://x:1", "ftp://x"):
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", looping)
        assert imds_target(8002) == DEFAULT_TARGET
