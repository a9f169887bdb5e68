"""The public listener against a real threaded upstream app, with stdlib clients."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from loguru import logger

from enclave_core.config import LimitsSettings
from enclave_core.http.listener import debug_enabled
from enclave_core.http.proxy import ProxyListener
from enclave_core.metrics import Metrics
from enclave_core.testing import free_port
from tests.helpers import LoopThread

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BIG = 5 * 1024 * 1024
FLOOD = 64 * 1024 * 1024
OWN = {"/health", "/v1/enclave-info", "/enclave/attestation"}


# -- the upstream app: a threaded stdlib HTTP/1.1 server ------------------------------------------
class AppServer(ThreadingHTTPServer):
    """Counts its connections and records what it received."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), AppHandler)
        self.connections = 0
        self.paths: list[str] = []
        self.sse_gate = threading.Event()
        self.drop_reused = False
        self.lock = threading.Lock()
        self.flood_sent = 0
        self.sink_gate = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients (the proxy) may hang up; that is not a test failure."""


class AppHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are separate writes
    server: AppServer

    def setup(self) -> None:
        super().setup()
        self.served = 0
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> tuple[bytes, bool]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return b"".join(parts), True
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0))), False

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_one_request(self) -> None:
        self.served += 1
        super().handle_one_request()

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.server.drop_reused and self.served > 1:
            self.server.drop_reused = False
            self.close_connection = True  # swallow the request: a stale keep-alive connection
            return
        if self.path.partition("?")[0] == "/hello":
            self.reply(200, b"hello", {"Keep-Alive": "timeout=5", "Connection": "keep-alive"})
        elif self.path == "/headers":
            self.reply(200, json.dumps({k.lower(): v for k, v in self.headers.items()}).encode())
        elif self.path == "/big":
            self.reply(200, pattern(BIG))
        elif self.path == "/fail":
            self.reply(500, b"boom")
        elif self.path == "/reset":
            self.close_connection = True
        elif self.path == "/head-only":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.flush()
            self.close_connection = True  # and no body: the app died mid-answer
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"one ", b"two ", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()  # no length: the body ends when the app closes
            self.close_connection = True
            self.wfile.write(b"data: first\n\n")
            self.wfile.flush()
            self.server.sse_gate.wait(10)
            self.wfile.write(b"data: second\n\ndata: third\n\n")
        elif self.path == "/ws":
            self.websocket_echo()
        elif self.path == "/until-close":
            self.send_response(200)
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"ends when the app closes")
        elif self.path == "/flood":
            self.send_response(200)
            self.send_header("Content-Length", str(FLOOD))
            self.end_headers()
            piece = b"f" * (1 << 20)
            for _ in range(FLOOD >> 20):
                self.wfile.write(piece)
                self.server.flood_sent += len(piece)
        else:
            self.reply(404, b"no such page")

    def do_POST(self) -> None:
        self.server.paths.append(self.path)
        if self.path == "/early":
            self.close_connection = True
            self.reply(200, b"early answer", {"Connection": "close"})
            return
        if self.path == "/slow-sink":
            self.server.sink_gate.wait(30)
        body, chunked = self.read_body()
        self.reply(200, body, {"X-Got-Chunked": "yes" if chunked else "no"})

    def websocket_echo(self) -> None:
        """A tiny real WebSocket server: handshake, then echo text frames until close."""
        accept = ws_accept(self.headers["Sec-WebSocket-Key"].encode())
        self.wfile.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.close_connection = True
        while True:
            opcode, payload = read_frame(self.rfile.read)
            self.wfile.write(frame(opcode, payload, mask=False))
            if opcode == 8:
                return


def ws_accept(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept value for ``key`` (RFC 6455: SHA-1, not for security)."""
    return base64.b64encode(hashlib.sha1(key + WS_GUID, usedforsecurity=False).digest())


def pattern(size: int) -> bytes:
    return (hashlib.sha256(b"seed").digest() * (size // 32 + 1))[:size]


def frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    assert len(payload) < 126
    key = os.urandom(4) if mask else b""
    data = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if mask else payload
    return bytes([0x80 | opcode, (0x80 if mask else 0) | len(payload)]) + key + data


def read_frame(read: Callable[[int], bytes]) -> tuple[int, bytes]:
    first, second = read(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", read(2))
    key = read(4) if second & 0x80 else b"\0\0\0\0"
    payload = read(length)
    return first & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# -- the runtime's own routes: a real small Falcon ASGI app -------------------------------------
class Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        stage = req.get_param("stage")
        resp.media = {"status": "initializing", "stage": stage} if stage else {"status": "ready"}
        resp.status = 503 if stage else 200


class Info:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"nonce": req.get_param("nonce"), "scheme": req.scheme}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"length": len(await req.stream.read())}


def own_app() -> Callable[..., Any]:
    app = falcon.asgi.App()
    app.add_route("/health", Health())
    app.add_route("/v1/enclave-info", Info())

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/enclave/attestation":
            raise RuntimeError("a bug in a runtime route")
        await app(scope, receive, send)

    return asgi


# -- fixtures ----------------------------------------------------------------------------------
@dataclass
class Stack:
    app: AppServer
    server: ProxyListener
    metrics: Metrics
    unavailable: list[str | None] = field(default_factory=lambda: [None])

    @property
    def port(self) -> int:
        return self.server.port

    def client(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


def start_app() -> AppServer:
    app = AppServer()
    threading.Thread(target=app.serve_forever, args=(0.05,), daemon=True).start()
    return app


@pytest.fixture
def loop_thread(request: pytest.FixtureRequest) -> Iterator[LoopThread]:
    lt = LoopThread(getattr(request, "param", "uvloop"))
    yield lt
    lt.close()


@pytest.fixture
def stack(loop_thread: LoopThread) -> Iterator[Stack]:
    app = start_app()
    metrics = Metrics()
    unavailable: list[str | None] = [None]
    server = ProxyListener(
        own_app=own_app(),
        is_own_path=OWN.__contains__,
        upstream_host="127.0.0.1",
        upstream_port=app.server_address[1],
        metrics=metrics,
        app_unavailable=lambda: unavailable[0],
        limits=LimitsSettings(max_body_bytes=100 * 1024 * 1024),
    )
    loop_thread.run(server.start("tcp://127.0.0.1:0"))
    yield Stack(app, server, metrics, unavailable)
    loop_thread.run(server.close())
    app.shutdown()
    app.server_close()


def request(stack: Stack, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    conn = stack.client()
    try:
        conn.request(method, path, **kw)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, half_close: bool = False) -> bytes:
    """Send ``data`` (then shut the write side if ``half_close``), read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# -- tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize("loop_thread", ["uvloop", "asyncio"], indirect=True)
def test_get_and_post_with_content_length(stack: Stack) -> None:
    assert request(stack, "GET", "/hello")[::2] == (200, b"hello")
    status, headers, body = request(stack, "POST", "/echo", body=b"some body")
    assert (status, body, headers["x-got-chunked"]) == (200, b"some body", "no")


def test_chunked_request_body_is_streamed(stack: Stack) -> None:
    pieces = [b"alpha-", b"beta-", b"gamma"]
    status, headers, body = request(
        stack, "POST", "/echo", body=iter(pieces), encode_chunked=True,
        headers={"Transfer-Encoding": "chunked"},
    )  # fmt: skip
    assert (status, body, headers["x-got-chunked"]) == (200, b"alpha-beta-gamma", "yes")


def test_chunked_response_is_relayed(stack: Stack) -> None:
    status, headers, body = request(stack, "GET", "/chunked")
    assert (status, body, headers["transfer-encoding"]) == (200, b"one two three", "chunked")


def test_large_bodies_both_ways_arrive_intact(stack: Stack) -> None:
    upload = os.urandom(BIG)
    status, _, body = request(stack, "POST", "/echo", body=upload)
    assert status == 200 and body == upload
    status, headers, body = request(stack, "GET", "/big")
    assert status == 200 and body == pattern(BIG) and headers["content-length"] == str(BIG)


def test_keep_alive_reuses_client_and_upstream_connections(stack: Stack) -> None:
    conn = stack.client()
    for _ in range(10):
        conn.request("GET", "/hello")
        resp = conn.getresponse()
        assert resp.read() == b"hello" and not resp.will_close
    conn.close()
    assert stack.app.connections == 1


def test_pipelined_requests_are_answered_in_order(stack: Stack) -> None:
    reply = raw_exchange(
        stack.port,
        b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nsecond"
        b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
        b"HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert re.findall(rb"HTTP/1\.1 (\d+) ", reply) == [b"200"] * 5
    assert reply.index(b"\r\n\r\nhello") < reply.index(b"second") < reply.index(b'{"status"')
    assert reply.endswith(b"\r\n\r\nhello") and reply.count(b"hello") == 2


def test_own_paths_go_to_the_falcon_app(stack: Stack) -> None:
    assert request(stack, "GET", "/health")[::2] == (200, b'{"status": "ready"}')
    status, _, body = request(stack, "GET", "/v1/enclave-info?nonce=ab12")
    assert (status, json.loads(body)) == (200, {"nonce": "ab12", "scheme": "http"})
    status, _, body = request(stack, "POST", "/v1/enclave-info", body=b"x" * 1000)
    assert (status, json.loads(body)) == (200, {"length": 1000})
    status, _, body = request(stack, "POST", "/health", body=b"x" * (1024 * 1024 + 1))
    assert (status, json.loads(body)["title"]) == (413, "Payload too large")
    assert stack.app.paths == []


def test_503_while_the_app_is_unavailable(stack: Stack) -> None:
    stack.unavailable[0] = "the app is starting"
    status, headers, body = request(stack, "GET", "/hello")
    assert status == 503 and headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "title": "Service unavailable",
        "description": "the app is starting",
    }
    assert request(stack, "GET", "/health")[0] == 200


def test_502_when_the_app_is_down_or_resets(stack: Stack, loop_thread: LoopThread) -> None:
    status, _, body = request(stack, "GET", "/reset")
    expected = {"title": "Bad gateway", "description": "the app is not reachable"}
    assert (status, json.loads(body)) == (502, expected)
    down = ProxyListener(
        own_app=own_app(), is_own_path=OWN.__contains__, upstream_host="127.0.0.1",
        upstream_port=free_port(), metrics=Metrics(),
    )  # fmt: skip
    loop_thread.run(down.start("tcp://127.0.0.1:0"))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", down.port, timeout=10)
        conn.request("GET", "/anything")
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())) == (502, expected)
        conn.close()
    finally:
        loop_thread.run(down.close())


def test_an_answer_cut_after_its_head_is_a_502(stack: Stack) -> None:
    status, _, body = request(stack, "GET", "/head-only")
    assert (status, json.loads(body)["title"]) == (502, "Bad gateway")


def test_a_stale_idle_upstream_connection_is_retried_once(stack: Stack) -> None:
    assert request(stack, "GET", "/hello")[0] == 200
    stack.app.drop_reused = True
    assert request(stack, "GET", "/hello")[::2] == (200, b"hello")
    assert stack.app.connections == 2 and stack.app.paths.count("/hello") == 3


def test_413_beyond_max_body_bytes(stack: Stack) -> None:
    reply = raw_exchange(
        stack.port, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 200000000\r\n\r\nxyz"
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in head
    assert json.loads(body)["title"] == "Payload too large"
    assert stack.app.paths == []


def test_server_sent_events_arrive_incrementally(stack: Stack) -> None:
    conn = stack.client()
    conn.request("GET", "/sse")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    first = resp.read1()  # the app holds back the rest until the client has this
    stack.app.sse_gate.set()
    rest = resp.read()
    conn.close()
    assert first == b"data: first\n\n" and rest == b"data: second\n\ndata: third\n\n"


def test_websocket_upgrade_is_spliced(stack: Stack) -> None:
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
        )
        reader = sock.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += reader.readline()
        accept = ws_accept(key)
        assert head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: " + accept in head
        for text in (b"hello websocket", b"second message"):
            sock.sendall(frame(1, text, mask=True))
            assert read_frame(reader.read) == (1, text)
        sock.sendall(frame(8, b"", mask=True))
        assert read_frame(reader.read) == (8, b"")
        assert reader.read() == b""
        reader.close()


def test_websocket_client_half_close_ends_the_tunnel(stack: Stack) -> None:
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\n\r\n" + frame(1, b"last words", mask=True)
        )
        sock.shutdown(socket.SHUT_WR)  # possibly before the app has accepted the upgrade
        reader = sock.makefile("rb")
        while reader.readline() != b"\r\n":
            pass
        assert read_frame(reader.read) == (1, b"last words")
        assert reader.read() == b""  # the app saw the end, so the proxy closes
        reader.close()


def test_a_body_cut_short_closes_the_connection(stack: Stack) -> None:
    request = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten.."
    assert raw_exchange(stack.port, request, half_close=True) == b""  # not a wait for 90 bytes


def test_malformed_request_gets_400_and_close(stack: Stack) -> None:
    reply = raw_exchange(stack.port, b"GET /hello HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head
    assert json.loads(body)["title"] == "Bad request"


def test_oversized_request_head_gets_431(stack: Stack) -> None:
    reply = raw_exchange(
        stack.port, b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * (3 << 20) + b"\r\n\r\n"
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and b"Connection: close" in head
    assert json.loads(body)["title"] == "Request header fields too large"
    assert stack.app.paths == []


def test_close_lets_the_request_in_flight_finish(stack: Stack, loop_thread: LoopThread) -> None:
    conn = stack.client()
    conn.request("GET", "/sse")
    resp = conn.getresponse()
    first = resp.read1()
    port = stack.port
    closing = asyncio.run_coroutine_threadsafe(stack.server.close(), loop_thread.loop)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the listener stops accepting at once
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the listener still accepts connections")
    stack.app.sse_gate.set()
    rest = resp.read()
    conn.close()
    closing.result(10)
    assert first + rest == b"data: first\n\ndata: second\n\ndata: third\n\n"


def test_forwarded_headers_added_and_hop_by_hop_stripped(stack: Stack) -> None:
    status, headers, body = request(
        stack, "GET", "/headers",
        headers={"Host": "example.test", "Connection": "keep-alive, X-Hop", "X-Hop": "1",
                 "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Connection": "keep-alive",
                 "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "spoofed", "X-Kept": "yes"},
    )  # fmt: skip
    seen = json.loads(body)
    assert status == 200 and seen["host"] == "example.test" and seen["x-kept"] == "yes"
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert (seen["x-forwarded-proto"], seen["x-forwarded-host"]) == ("http", "example.test")
    assert not {"x-hop", "keep-alive", "te", "proxy-connection"} & set(seen)
    assert "keep-alive" not in request(stack, "GET", "/hello")[1]


def test_metrics_count_requests_and_errors(stack: Stack) -> None:
    for path in ("/hello", "/health", "/missing", "/fail", "/health?stage=storage"):
        request(stack, "GET", path)  # the runtime's own 503 reports a stage: not an error
    status, _, body = request(stack, "GET", "/enclave/attestation")
    assert (status, json.loads(body)["title"]) == (500, "Internal error")  # no traceback
    stack.unavailable[0] = "restarting"
    request(stack, "GET", "/hello")
    counters = stack.metrics.snapshot()
    assert (counters["http_requests"], counters["http_errors"]) == (7, 3)


def test_access_log_at_debug(stack: Stack) -> None:
    records: list[Any] = []
    sink = logger.add(lambda message: records.append(message.record), level="DEBUG")
    try:
        stack.server.debug = debug_enabled()  # the server checks every few seconds
        request(stack, "GET", "/hello?x=1")
        deadline = time.monotonic() + 10  # the server logs right after it has answered
        while not any(r["message"] == "request" for r in records) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        logger.remove(sink)
    fields = [r["extra"] for r in records if r["message"] == "request"]
    assert len(fields) == 1 and fields[0]["duration_ms"] >= 0
    assert {k: fields[0][k] for k in ("method", "path", "status")} == {
        "method": "GET",
        "path": "/hello",
        "status": 200,
    }


def test_tls_listener_reports_https(loop_thread: LoopThread, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    app = start_app()
    server = ProxyListener(
        own_app=own_app(), is_own_path=OWN.__contains__, upstream_host="127.0.0.1",
        upstream_port=app.server_address[1], metrics=Metrics(), ssl_context=server_ctx,
    )  # fmt: skip
    loop_thread.run(server.start("tcp://127.0.0.1:0"))
    try:
        client_ctx = ssl.create_default_context(cafile=tmp_path / "cert.pem")
        conn = http.client.HTTPSConnection("localhost", server.port, timeout=10, context=client_ctx)
        conn.request("GET", "/v1/enclave-info")
        assert json.loads(conn.getresponse().read())["scheme"] == "https"
        conn.request("GET", "/headers")
        assert json.loads(conn.getresponse().read())["x-forwarded-proto"] == "https"
        # The connection stays open and idle: closing the server must not wait for it (an idle
        # TLS client never answers close_notify). A grace of an hour shows a wait as a timeout.
        idle = http.client.HTTPSConnection("localhost", server.port, timeout=10, context=client_ctx)
        idle.request("GET", "/hello")
        assert idle.getresponse().read()
        loop_thread.run(server.close(grace_s=3600))
        assert server.connections == set()
        idle.close()
        conn.close()
    finally:
        loop_thread.run(server.close())
        app.shutdown()
        app.server_close()


def wait_until_stalled(progress: Callable[[], int], total: int) -> int:
    """Poll ``progress`` until it stops moving (or reaches ``total``); return where it stopped."""
    samples: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        samples.append(progress())
        if samples[-1] >= total or samples[-4:] == [samples[-1]] * 4:
            return samples[-1]
        time.sleep(0.1)
    raise AssertionError(f"still moving after 30 s: {samples[-3:]}")


async def buffered(server: ProxyListener) -> int:
    """Bytes the proxy holds in its write buffers, client and upstream side."""
    total = 0
    for conn in server.connections:
        total += conn.transport.get_write_buffer_size()
        if conn.bound is not None:
            total += conn.bound.transport.get_write_buffer_size()
    return total


def test_back_pressure_on_a_slow_client(stack: Stack, loop_thread: LoopThread) -> None:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(b"GET /flood HTTP/1.1\r\nHost: a\r\n\r\n")
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200 ")
        assert wait_until_stalled(lambda: stack.app.flood_sent, FLOOD) < FLOOD
        assert loop_thread.run(buffered(stack.server)) <= 1 << 20
        while reader.readline() != b"\r\n":
            pass
        received = 0
        while received < FLOOD and (chunk := reader.read1(1 << 20)):  # the client catches up
            received += len(chunk)
        reader.close()
    assert received == FLOOD and stack.app.flood_sent == FLOOD


def test_back_pressure_on_a_slow_app(stack: Stack, loop_thread: LoopThread) -> None:
    sent = [0]
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as sock:

        def upload() -> None:
            sock.sendall(
                b"POST /slow-sink HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % FLOOD
            )
            piece = b"u" * (1 << 20)
            for _ in range(FLOOD >> 20):
                sock.sendall(piece)
                sent[0] += len(piece)

        uploader = threading.Thread(target=upload)
        uploader.start()
        try:
            assert wait_until_stalled(lambda: sent[0], FLOOD) < FLOOD
            assert loop_thread.run(buffered(stack.server)) <= 1 << 20
        finally:
            stack.app.sink_gate.set()
            uploader.join(30)
        reader = sock.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += reader.readline()
        echoed = reader.read(FLOOD)
        reader.close()
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d\r\n" % FLOOD in head
    assert sent[0] == FLOOD and echoed == b"u" * FLOOD


def test_close_delimited_answers_for_http_1_0_and_1_1_clients(stack: Stack) -> None:
    reply = raw_exchange(stack.port, b"GET /until-close HTTP/1.0\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" not in head.lower()
    assert body == b"ends when the app closes"
    status, headers, body = request(stack, "GET", "/until-close")
    assert (status, headers["transfer-encoding"], body) == (
        200,
        "chunked",
        b"ends when the app closes",
    )


def test_early_answer_then_the_rest_of_the_body_is_drained(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200 ")
        while (line := reader.readline()) != b"\r\n":
            assert not line.lower().startswith(b"connection: close")
        assert reader.read(len(b"early answer")) == b"early answer"
        sock.sendall(b"x" * 100000 + b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
        assert reader.readline().startswith(b"HTTP/1.1 200 ")
        reader.close()


def test_client_half_close_still_gets_the_answer(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\nhello")


def test_the_debug_check_works_with_no_log_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    from loguru import logger

    # With every sink removed loguru's minimum level is infinity; the sweep must not crash on it.
    monkeypatch.setattr(logger._core, "min_level", float("inf"))  # type: ignore[attr-defined]
    assert debug_enabled() is False
