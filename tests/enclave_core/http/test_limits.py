"""runtime.limits on every runtime listener: a real `enclave runtime` process, raw client sockets.

Three runtimes, each started once for the module with the local backends and a small app:
``tight`` (TLS, small sizes and sub-second timeouts), ``crowded`` (TLS, max_connections 4) and
``stock`` (every default). Each test runs against the public listener (TLS, proxying to the app),
the app API and the control listener, so the enclave.yaml limits are seen to reach all three.
The helpers here are shared with tests/enclave_core/supervisor/test_limits.py.
"""

from __future__ import annotations

import contextlib
import json
import resource
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from enclave_core.config import Config, LimitsSettings
from enclave_core.http.listener import AsgiListener, raise_file_limit
from enclave_core.runtime.tls import make_tls_identity
from enclave_core.testing import dev_config_document, write_config
from tests.enclave_core.http.openapi_conformance import check_answer
from tests.helpers import REPO_ROOT, LoopThread, wait_for

# The app behind the public listener: GET answers at once, /stream streams for longer than
# the tight request_timeout_s, POST reads the whole body (Content-Length or chunked). It leaves
# its app API token where the tests read it (the app API refuses a body without it at once).
APP = r"""
import os, pathlib, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

pathlib.Path(os.environ["TOKEN_FILE"]).write_text(os.environ["ENCLAVE_MGMT_TOKEN"])

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/big/"):  # /big/N: N bytes, written as fast as they are taken
            size = int(self.path[5:])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"b" * 65536
            try:
                for start in range(0, size, len(block)):
                    self.wfile.write(block[: size - start])
            except OSError:
                pass
            return
        if self.path == "/echo":  # a WebSocket-like upgrade: then echoes every byte
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "echo")
            self.end_headers()
            self.wfile.flush()
            while data := self.connection.recv(65536):
                self.connection.sendall(data)
            self.close_connection = True
            return
        if self.path != "/stream":
            return self.reply(b"ok " + self.path.encode())
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(8):
            piece = b"part %d\n" % i
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(0.3)
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            size = 0
            while (n := int(self.rfile.readline().split(b";")[0], 16)):
                size += len(self.rfile.read(n))
                self.rfile.readline()
            self.rfile.readline()
        else:
            size = len(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.reply(b"got %d" % size)

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

TIGHT = {
    "max_header_bytes": 4096,
    "max_body_bytes": 65536,
    "header_timeout_s": 0.5,
    "request_timeout_s": 1.5,
    "idle_timeout_s": 1.0,
    "send_timeout_s": 1.0,
    "tunnel_idle_timeout_s": 1.0,
}
CROWDED = {"max_connections": 4}

UNVERIFIED = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
UNVERIFIED.check_hostname = False
UNVERIFIED.verify_mode = ssl.CERT_NONE
#: What a socket may raise when the server has closed or refused it.
CLOSED = (ConnectionError, ssl.SSLError, TimeoutError)


@dataclass(frozen=True)
class Listener:
    """One listener under test and what to send it."""

    name: str
    port: int
    tls: bool
    get: str  # a request target that gets an answer
    status: int  # the status of that answer
    upload: str  # "METHOD /path" that accepts a body
    auth: str = ""  # header lines every request carries

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A connected socket (TLS handshake done when the listener speaks TLS)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if not self.tls:
            return sock
        try:
            return UNVERIFIED.wrap_socket(sock)
        except BaseException:
            sock.close()
            raise

    def request(self, extra: str = "") -> bytes:
        """A well-formed request for ``get`` (keep-alive unless ``extra`` says otherwise)."""
        return f"GET {self.get} HTTP/1.1\r\nHost: test\r\n{self.auth}{extra}\r\n".encode()

    def upload_head(self, framing: str) -> bytes:
        """The head of an upload request with ``framing`` (a Content-Length or chunked)."""
        method, path = self.upload.split(" ")
        return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{self.auth}{framing}\r\n\r\n".encode()


# -- raw HTTP helpers (also used by the supervisor's limit tests) -------------------------------
def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after its answer counts as closed)."""
    chunks: list[bytes] = []
    with contextlib.suppress(*CLOSED):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length (or chunked) body, leaving the connection open."""
    reader = sock.makefile("rb")
    try:
        status_line = reader.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers: dict[str, str] = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(reader.readline().split(b";")[0], 16):
                body += reader.read(size)
                reader.readline()
            reader.readline()
        else:
            body = reader.read(int(headers.get("content-length", "0")))
    finally:
        reader.close()
    return int(status_line.split()[1]), headers, body


def parse(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    """The first response in ``reply``: status, lower-cased headers, body."""
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), reply[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(body)))
    return int(lines[0].split()[1]), headers, body[:length]


def answered(sock: socket.socket, wait: float) -> bytes | None:
    """What the server sent within ``wait`` seconds (``b""``: it closed), or None: nothing yet.

    TLS 1.3 servers send session tickets after the handshake: readable, but no answer.
    """
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        return None
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except (BlockingIOError, ssl.SSLWantReadError):
        return None
    except CLOSED:
        return b""
    finally:
        sock.settimeout(timeout)


def trickle(sock: socket.socket, pieces: Iterator[bytes] | list[bytes], pause: float) -> bytes:
    """Send ``pieces`` with a pause before each until the server answers or closes; then read
    what it sends until it closes."""
    for piece in pieces:
        first = answered(sock, pause)
        if first is not None:
            return first + read_until_closed(sock) if first else b""
        try:
            sock.sendall(piece)
        except CLOSED:
            break
    return read_until_closed(sock)


def assert_refused_with(reply: bytes, status: int, title: str) -> dict[str, Any]:
    """The reply is one JSON error with ``Connection: close``, and then the server closed."""
    code, headers, body = parse(reply)
    assert (code, headers.get("connection")) == (status, "close"), reply[:300]
    assert headers["content-type"] == "application/json"
    error: dict[str, Any] = json.loads(body)
    assert error["title"] == title and set(error) == {"title", "description"}
    assert reply.endswith(body)  # nothing after the error: the connection ended there
    return error


def served(listener: Listener) -> bool:
    """Whether a new connection gets an answer now (False when refused or cut)."""
    try:
        with listener.connect(timeout=5) as sock:
            sock.sendall(listener.request("Connection: close\r\n"))
            reply = read_until_closed(sock)
    except CLOSED:
        return False
    return bool(reply) and parse(reply)[0] == listener.status


def hold(listener: Listener) -> socket.socket:
    """A connection that has been served once and stays open (retried while refused: the server
    may not have seen yet that an earlier connection closed)."""
    deadline = time.monotonic() + 20
    while True:
        sock = None
        try:
            sock = listener.connect()
            sock.sendall(listener.request())
            if read_response(sock)[0] == listener.status:
                return sock
        except (*CLOSED, AssertionError):
            pass
        if sock is not None:
            sock.close()
        assert time.monotonic() < deadline, f"the {listener.name} never served a connection"
        time.sleep(0.1)


def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send nothing at all."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def assert_served_beside_idle_connections(listener: Listener, count: int) -> None:
    """With ``count`` connections open that send nothing, a client is still served, on a new
    connection and on a kept-alive one."""
    idle = open_idle(listener.port, count)
    try:
        assert served(listener)
        with listener.connect() as sock:
            sock.sendall(listener.request())
            assert read_response(sock)[0] == listener.status
    finally:
        for sock in idle:
            sock.close()


# -- the runtimes ------------------------------------------------------------------------------
@dataclass
class Runtime:
    config: Config
    process: subprocess.Popen[bytes]

    def listeners(self) -> dict[str, Listener]:
        rt = self.config.runtime
        token_file = self.config.base_dir.parent / f"{self.config.base_dir.name}-token"
        token = token_file.read_text() if token_file.exists() else ""
        return {
            "public": Listener("public", rt.port, rt.tls, "/greet", 200, "POST /upload"),
            "app API": Listener("app API", rt.app_api_port, False, "/v1/storage", 200,
                                "PUT /v1/storage/big", f"Authorization: Bearer {token}\r\n"),
            "control": Listener("control", rt.control_port, False, "/health", 200,
                                "POST /v1/export-key"),
        }  # fmt: skip


def start_runtime(folder: Path, limits: dict[str, Any]) -> Iterator[Runtime]:
    """An `enclave runtime` with the local backends, TLS and ``runtime.limits``; until ready."""
    (folder / "app.py").write_text(APP)
    document = dev_config_document(runtime={"tls": True, "limits": limits})
    document["app"]["command"] = [sys.executable, "app.py"]
    document["app"]["env"] = {"TOKEN_FILE": str(folder.parent / f"{folder.name}-token")}
    config = write_config(folder, document)
    log = (folder.parent / f"{folder.name}-runtime.log").open("ab")
    process = subprocess.Popen(  # noqa: S603 - our own runtime
        [sys.executable, "-m", "enclave_core.cli.main", "runtime", "-c", str(config.path)],
        stdout=log,
        stderr=log,
        cwd=folder,
    )
    log.close()
    runtime = Runtime(config, process)
    try:
        public = runtime.listeners()["public"]
        deadline = time.monotonic() + 60
        while not served(public):
            assert process.poll() is None, f"runtime exited with {process.returncode}"
            assert time.monotonic() < deadline, "the runtime never served the app"
            time.sleep(0.1)
        yield runtime
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    yield from start_runtime(tmp_path_factory.mktemp("tight"), TIGHT)


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    yield from start_runtime(tmp_path_factory.mktemp("crowded"), CROWDED)


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    yield from start_runtime(tmp_path_factory.mktemp("stock"), {})


LISTENERS = ["public", "app API", "control"]


# -- header size -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LISTENERS)
@pytest.mark.parametrize("pieces", [1, 16])
def test_a_head_beyond_max_header_bytes_gets_431(tight: Runtime, name: str, pieces: int) -> None:
    listener = tight.listeners()[name]
    head = f"GET {listener.get} HTTP/1.1\r\nHost: test\r\nX-Big: {'b' * 8000}\r\n\r\n".encode()
    step = -(-len(head) // pieces)
    with listener.connect() as sock:
        reply = trickle(sock, [head[i : i + step] for i in range(0, len(head), step)], 0.01)
    error = assert_refused_with(reply, 431, "Request header fields too large")
    assert error["description"] == "the request head exceeds 4096 bytes"


@pytest.mark.parametrize("name", LISTENERS)
def test_pipelined_requests_beyond_the_head_limit_in_total_are_all_served(
    tight: Runtime, name: str
) -> None:
    listener = tight.listeners()[name]
    one = listener.request("X-Padding: " + "p" * 200 + "\r\n")
    burst = one * 30 + listener.request("Connection: close\r\n")  # ~8 KiB in one write
    with listener.connect() as sock:
        sock.sendall(burst)
        reply = read_until_closed(sock)
    assert reply.count(b"HTTP/1.1 %d " % listener.status) == 31
    assert b"HTTP/1.1 431" not in reply


DOCUMENTS = {"public": "runtime-public.json", "app API": "runtime-app.json",
             "control": "runtime-control.json"}  # fmt: skip


@pytest.mark.parametrize("name", LISTENERS)
def test_limit_answers_are_the_documented_ones(tight: Runtime, name: str) -> None:
    """408, 413 and 431 conform to the listener's committed OpenAPI document, on any route."""
    listener = tight.listeners()[name]
    path = "/health" if name == "public" else listener.get  # a route the document describes
    document = json.loads(
        (REPO_ROOT / "docs" / "api" / DOCUMENTS[name]).read_text(encoding="utf-8")
    )
    head = f"GET {path} HTTP/1.1\r\nHost: test\r\n{listener.auth}"
    sent = {
        431: [f"{head}X-Big: {'b' * 8000}\r\n\r\n".encode()],
        413: [f"{head}Content-Length: 100000\r\n\r\n".encode()],
        408: [head.encode()] + [b"X-Slow: 1\r\n"] * 300,
    }
    for status, pieces in sent.items():
        with listener.connect() as sock:
            reply = trickle(sock, pieces, 0.1 if status == 408 else 0.01)
        code, headers, body = parse(reply)
        assert code == status
        check_answer(document, "GET", path, code, headers, body)


# -- body size ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LISTENERS)
def test_a_declared_body_beyond_max_body_bytes_gets_413(tight: Runtime, name: str) -> None:
    listener = tight.listeners()[name]
    with listener.connect() as sock:
        sock.sendall(listener.upload_head("Content-Length: 100000") + b"x" * 1000)
        reply = read_until_closed(sock)
    error = assert_refused_with(reply, 413, "Payload too large")
    assert error["description"] == "the body exceeds 65536 bytes"


# (the control listener's one upload, export-key, refuses more than 1 KiB itself: its own 413)
@pytest.mark.parametrize("name", ["public", "app API"])
def test_a_chunked_body_beyond_max_body_bytes_gets_413(tight: Runtime, name: str) -> None:
    listener = tight.listeners()[name]
    chunk = b"4000\r\n" + b"c" * 0x4000 + b"\r\n"  # 16 KiB per chunk, 80 KiB in all
    with listener.connect() as sock:
        sock.sendall(listener.upload_head("Transfer-Encoding: chunked"))
        reply = trickle(sock, [chunk] * 5 + [b"0\r\n\r\n"], 0.01)
    assert_refused_with(reply, 413, "Payload too large")


def test_a_pipelined_body_beyond_the_limit_is_refused_in_its_turn(tight: Runtime) -> None:
    """The app's streamed answer to the first request comes whole; then the 413 and close."""
    listener = tight.listeners()["public"]
    chunk = b"4000\r\n" + b"c" * 0x4000 + b"\r\n"  # 80 KiB in all, the limit is 64 KiB
    with listener.connect() as sock:
        # one write: the first read holds the stream request and the whole upload behind it
        first = b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n"
        sock.sendall(first + listener.upload_head("Transfer-Encoding: chunked") + chunk * 5)
        reply = read_until_closed(sock)
    streamed, _, rest = reply.partition(b"0\r\n\r\n")  # the end of the chunked stream
    assert streamed.startswith(b"HTTP/1.1 200 ") and b"part 7" in streamed
    assert_refused_with(rest, 413, "Payload too large")


def test_a_body_within_max_body_bytes_reaches_the_app(tight: Runtime) -> None:
    listener = tight.listeners()["public"]
    with listener.connect() as sock:
        sock.sendall(listener.upload_head("Content-Length: 65536") + b"u" * 65536)
        assert read_response(sock)[::2] == (200, b"got 65536")


# -- slow clients ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LISTENERS)
def test_a_head_sent_slowly_gets_408_and_close(tight: Runtime, name: str) -> None:
    listener = tight.listeners()[name]
    lines = [f"GET {listener.get} HTTP/1.1\r\nHost: test\r\n".encode()]
    lines += [b"X-Slow: %d\r\n" % i for i in range(300)]  # would take 30 s, far below 4 KiB
    with listener.connect() as sock:
        reply = trickle(sock, lines, 0.1)
    error = assert_refused_with(reply, 408, "Request timeout")
    assert error["description"] == "the request head did not arrive within 0.5 s"


@pytest.mark.parametrize("name", LISTENERS)
def test_a_body_sent_slowly_gets_408_and_close(tight: Runtime, name: str) -> None:
    listener = tight.listeners()[name]
    with listener.connect() as sock:
        sock.sendall(listener.upload_head("Content-Length: 1000"))
        # one byte per 0.1 s: each piece is quick, the whole would take 100 s
        reply = trickle(sock, [b"x"] * 1000, 0.1)
    error = assert_refused_with(reply, 408, "Request timeout")
    assert error["description"] == "the request did not arrive within 1.5 s"


@pytest.mark.parametrize("name", LISTENERS)
def test_a_connection_that_sends_nothing_is_closed_silently(tight: Runtime, name: str) -> None:
    port = tight.listeners()[name].port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # no TLS handshake either on the public listener: the head timeout bounds it too
        assert read_until_closed(sock) == b""


@pytest.mark.parametrize("name", LISTENERS)
def test_an_idle_keep_alive_connection_is_closed_silently(tight: Runtime, name: str) -> None:
    listener = tight.listeners()[name]
    with listener.connect() as sock:
        sock.sendall(listener.request())
        status, headers, _ = read_response(sock)
        assert status == listener.status and headers.get("connection") != "close"
        assert read_until_closed(sock) == b""


def test_a_streamed_answer_is_not_cut_by_the_request_timeout(tight: Runtime) -> None:
    listener = tight.listeners()["public"]
    with listener.connect() as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        status, _, body = read_response(sock)  # eight parts, 0.3 s apart
        assert status == 200 and body == b"".join(b"part %d\n" % i for i in range(8))
        sock.sendall(listener.request())  # and the connection goes on
        assert read_response(sock)[0] == 200


# -- clients that stop reading, and quiet tunnels ----------------------------------------------
def receive_all(sock: socket.socket, pace: float = 0.0) -> tuple[int, bool]:
    """Bytes read until the server closed (``pace``: a pause between reads), and whether the
    read ended by a close; a read that waited 10 s ends it too (False: the server never did)."""
    total = 0
    sock.settimeout(10)
    try:
        while chunk := sock.recv(65536):
            total += len(chunk)
            if pace:
                time.sleep(pace)
    except TimeoutError:
        return total, False
    except (ConnectionError, ssl.SSLError):
        pass
    return total, True


def small_buffer_connection(listener: Listener) -> socket.socket:
    """A connection whose receive buffer is small, so a client that stops reading stalls us."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", listener.port))
    return UNVERIFIED.wrap_socket(raw) if listener.tls else raw


def test_a_client_that_stops_reading_is_cut_after_send_timeout(tight: Runtime) -> None:
    listener = tight.listeners()["public"]
    size = 256 * 1024 * 1024
    with small_buffer_connection(listener) as sock:
        sock.sendall(b"GET /big/%d HTTP/1.1\r\nHost: test\r\n\r\n" % size)
        time.sleep(4)  # reads nothing: send_timeout_s is 1 s
        received, closed = receive_all(sock)
    assert closed and received < size // 4  # cut: only what the buffers held arrived
    assert served(listener)  # the app, whose answer was abandoned, serves on


def test_a_slow_but_steady_reader_gets_the_whole_answer(tight: Runtime) -> None:
    listener = tight.listeners()["public"]
    size = 6 * 1024 * 1024  # at 64 KiB per 30 ms: over 3 s, the send timeout is 1 s
    with small_buffer_connection(listener) as sock:
        sock.sendall(b"GET /big/%d HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n" % size)
        received, closed = receive_all(sock, pace=0.03)
    assert closed and size < received < size + 1024, received  # the whole body, and its head


def test_a_quiet_tunnel_is_closed_after_tunnel_idle_timeout(tight: Runtime) -> None:
    listener = tight.listeners()["public"]
    with listener.connect() as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 101 ")
        for i in range(6):  # a ping every 0.3 s: 1.8 s of traffic, longer than the 1 s limit
            time.sleep(0.3)
            sock.sendall(b"ping %d" % i)
            assert sock.recv(100) == b"ping %d" % i
        assert answered(sock, 10) == b""  # then silence: closed


# -- connections -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LISTENERS)
def test_beyond_max_connections_a_connection_is_closed_at_accept(
    crowded: Runtime, name: str
) -> None:
    listener = crowded.listeners()[name]
    held: list[socket.socket] = []
    try:
        for _ in range(4):  # four connections served and kept open
            held.append(hold(listener))
        assert not served(listener)  # a fifth is closed without an answer
        held[0].sendall(listener.request())  # the ones already open go on
        assert read_response(held[0])[0] == listener.status
        held.pop().close()
        wait_for(lambda: served(listener))  # a slot is free again
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("name", LISTENERS)
def test_500_idle_connections_do_not_lock_out_a_client(stock: Runtime, name: str) -> None:
    # on the public listener: 500 TLS handshakes pending
    assert_served_beside_idle_connections(stock.listeners()[name], 500)


# -- the same server on either event loop (the enclave runs asyncio's own: vsock) ---------------
async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_tls_limits_on_either_event_loop(kind: str) -> None:
    loop = LoopThread(kind)
    limits = LimitsSettings(header_timeout_s=0.5, request_timeout_s=1.0, max_connections=2)
    server = AsgiListener(
        hello, name="test", limits=limits, ssl_context=make_tls_identity("t").context
    )
    try:
        loop.run(server.start("tcp://127.0.0.1:0"))
        listener = Listener("test", server.port, True, "/", 200, "POST /")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            assert read_until_closed(sock) == b""  # no handshake: cut after the head timeout
        with listener.connect() as sock:
            reply = trickle(sock, [b"GET / HTTP/1.1\r\n"] + [b"X-Slow: 1\r\n"] * 300, 0.1)
        assert_refused_with(reply, 408, "Request timeout")
        held = [hold(listener), hold(listener)]
        try:
            assert not served(listener)  # refused before its handshake
            held.pop().close()
            wait_for(lambda: served(listener))
        finally:
            for sock in held:
                sock.close()
    finally:
        loop.run(server.close())
        loop.close()


def test_an_api_refuses_before_the_body_and_asks_for_it_only_when_it_reads(tight: Runtime) -> None:
    listener = tight.listeners()["app API"]
    head = b"PUT /v1/storage/k HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
    with listener.connect() as sock:  # no token: 401 at once, no 100 Continue, then close
        sock.sendall(head + b"Expect: 100-continue\r\n\r\n")
        reply = read_until_closed(sock)
    assert_refused_with(reply, 401, "Unauthorized")
    with listener.connect() as sock:
        sock.sendall(head + listener.auth.encode() + b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # the route reads it
        sock.sendall(b"hello")
        assert read_response(sock)[0] == 201


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        raised = raise_file_limit()
        assert raised > 256 and resource.getrlimit(resource.RLIMIT_NOFILE) == (raised, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def big(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b"a" * (32 * 1024 * 1024) if scope["path"] == "/big" else b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_an_api_cuts_a_client_that_stops_reading_on_either_event_loop(kind: str) -> None:
    """The app API, control listener and management API (AsgiListener) apply send_timeout_s."""
    loop = LoopThread(kind)
    server = AsgiListener(big, name="test", limits=LimitsSettings(send_timeout_s=0.5))
    try:
        loop.run(server.start("tcp://127.0.0.1:0"))
        listener = Listener("test", server.port, False, "/", 200, "POST /")
        with small_buffer_connection(listener) as sock:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
            time.sleep(3)  # reads nothing
            received, closed = receive_all(sock)
        assert closed and received < 16 * 1024 * 1024
        assert served(listener)
        assert server.cut.count == 1
    finally:
        loop.run(server.close())
        loop.close()
