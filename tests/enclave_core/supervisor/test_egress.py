"""The egress proxy against real servers on loopback: CONNECT tunnels, refusals, bounds, HTTPS."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enclave_core.config import Config
from enclave_core.errors import ConfigError, EnclaveError
from enclave_core.supervisor.egress import (
    Destination,
    EgressPolicy,
    EgressProxy,
    host_listen_address,
    host_uses_vsock,
    parse_destination,
    start_host_services,
    stop_host_services,
)
from enclave_core.supervisor.imds import ImdsForwarder
from enclave_core.testing import free_port
from tests.enclave_core.supervisor.egress_helpers import (
    LogRecords,
    echo_digest,
    send_and_half_close,
    start_tls_server,
    stop_tls_server,
)
from tests.helpers import LoopThread


@pytest.fixture
def echo_port(loop: LoopThread) -> Iterator[int]:
    """A TCP server on loopback echoing bytes and, after EOF, a digest of them."""

    async def start() -> asyncio.Server:
        return await asyncio.start_server(echo_digest, "127.0.0.1", 0)

    server = loop.run(start())
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        loop.run(server.wait_closed())


def start_proxy(loop: LoopThread, allow: list[str], **options: Any) -> EgressProxy:
    proxy = EgressProxy(
        f"tcp://127.0.0.1:{free_port()}", EgressPolicy(allow, "eu-west-1"), **options
    )
    loop.run(proxy.start())
    return proxy


@pytest.fixture
def proxy_factory(loop: LoopThread) -> Iterator[list[EgressProxy]]:
    started: list[EgressProxy] = []
    try:
        yield started
    finally:
        for proxy in started:
            loop.run(proxy.close())


def port_of(proxy: EgressProxy) -> int:
    return int(proxy.bound.rsplit(":", 1)[1])


def connect(proxy: EgressProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the peer closes."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(proxy: EgressProxy, request: bytes) -> bytes:
    """Send ``request`` and return the whole answer (the proxy closes after refusing)."""
    with connect(proxy) as sock:
        sock.sendall(request)
        return read_all(sock)


def read_head(sock: socket.socket) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"closed after {head!r}"
        head += byte
    return head


# ---------------------------------------------------------------------------------- the policy


def test_region_is_expanded_and_hosts_match_exactly_and_case_insensitively() -> None:
    policy = EgressPolicy(["kms.{region}.amazonaws.com:443", "127.0.0.1:8080"], "eu-west-1")
    assert policy.allows(parse_destination("kms.eu-west-1.amazonaws.com:443"))
    assert policy.allows(parse_destination("KMS.EU-West-1.amazonaws.com.:443"))
    assert policy.allows(Destination("127.0.0.1", 8080))
    assert not policy.allows(parse_destination("kms.us-east-1.amazonaws.com:443"))
    assert not policy.allows(parse_destination("kms.eu-west-1.amazonaws.com:80"))
    assert not policy.allows(parse_destination("xkms.eu-west-1.amazonaws.com:443"))
    assert not policy.allows(parse_destination("kms.eu-west-1.amazonaws.com.evil.test:443"))


def test_a_wildcard_matches_names_below_the_domain_only() -> None:
    policy = EgressPolicy(["*.s3.{region}.amazonaws.com:443"], "eu-west-1")
    assert policy.allows(parse_destination("bucket.s3.eu-west-1.amazonaws.com:443"))
    assert policy.allows(parse_destination("a.b.s3.eu-west-1.amazonaws.com:443"))
    assert not policy.allows(parse_destination("s3.eu-west-1.amazonaws.com:443"))
    assert not policy.allows(parse_destination("evils3.eu-west-1.amazonaws.com:443"))
    assert not policy.allows(parse_destination("bucket.s3.eu-west-1.amazonaws.com:8443"))


def test_the_default_allow_list_of_a_config(make_config: Callable[..., Config]) -> None:
    config = make_config(region="ap-south-1")
    policy = EgressPolicy.from_config(config)
    for service in ("kms", "ssm", "s3"):
        assert policy.allows(Destination(f"{service}.ap-south-1.amazonaws.com", 443))
    assert not policy.allows(Destination("sts.ap-south-1.amazonaws.com", 443))


@pytest.mark.parametrize(
    "entry", ["kms.{region}.amazonaws.com", "host:0", "host:99999", "bad host:443", "*.:443", ""]
)
def test_an_invalid_entry_is_a_config_error_naming_it(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"egress\.allow\.1: "):
        EgressPolicy(["ok.example:443", entry], "eu-west-1")


def test_ipv6_destinations() -> None:
    policy = EgressPolicy(["[::1]:443"], "eu-west-1")
    assert policy.allows(parse_destination("[0:0::1]:443"))
    assert str(parse_destination("[::1]:443")) == "[::1]:443"
    with pytest.raises(ValueError, match="IPv6"):
        parse_destination("[nope]:443")


# ------------------------------------------------------------------------------------ tunnels


def test_an_allowed_destination_is_tunnelled_both_ways_with_half_close(
    loop: LoopThread, echo_port: int, proxy_factory: list[EgressProxy]
) -> None:
    proxy = start_proxy(loop, [f"localhost:{echo_port}"])
    proxy_factory.append(proxy)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    with connect(proxy) as sock:
        sock.sendall(f"CONNECT LocalHost:{echo_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_head(sock) == b"HTTP/1.1 200 Connection Established\r\n\r\n"
        sender = threading.Thread(target=send_and_half_close, args=(sock, payload))
        sender.start()
        answer = read_all(sock)  # the echo, then the digest sent after our half-close
        sender.join()
    assert answer == payload + b"EOF " + hashlib.sha256(payload).hexdigest().encode()


def test_bytes_sent_with_the_connect_request_reach_the_destination(
    loop: LoopThread, echo_port: int, proxy_factory: list[EgressProxy]
) -> None:
    proxy = start_proxy(loop, [f"127.0.0.1:{echo_port}"])
    proxy_factory.append(proxy)
    with connect(proxy) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{echo_port} HTTP/1.0\r\n\r\nearly bytes".encode())
        sock.shutdown(socket.SHUT_WR)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 Connection Established\r\n\r\nearly bytes")


def test_anything_outside_the_allow_list_is_refused_with_403_and_logged(
    loop: LoopThread, echo_port: int, proxy_factory: list[EgressProxy]
) -> None:
    proxy = start_proxy(loop, [f"localhost:{echo_port}"])
    proxy_factory.append(proxy)
    with LogRecords() as records:
        for target in ("example.com:443", f"127.0.0.1:{echo_port}", f"localhost:{echo_port + 1}"):
            answer = exchange(proxy, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
            assert b"not in egress.allow" in answer
    refused = records.named("egress refused")
    assert [(r["host"], r["port"]) for r in refused] == [
        ("example.com", 443),
        ("127.0.0.1", echo_port),
        ("localhost", echo_port + 1),
    ]
    assert {r["level"] for r in refused} == {"WARNING"}


def test_a_real_https_request_through_the_proxy(
    loop: LoopThread, proxy_factory: list[EgressProxy], tmp_path: Path
) -> None:
    server, cert = start_tls_server(tmp_path)
    tls_port = server.server_address[1]
    proxy = start_proxy(loop, [f"localhost:{tls_port}"])
    proxy_factory.append(proxy)
    client_context = ssl.create_default_context(cafile=str(cert))
    try:
        # http.client's own tunnel (what urllib3, and so boto3, builds on)
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port_of(proxy), context=client_context, timeout=10
        )
        connection.set_tunnel("localhost", tls_port)
        connection.request("GET", "/hello")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"hello over TLS")
        connection.close()
        # urllib with a proxy, as HTTPS_PROXY configures it
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": f"http://127.0.0.1:{port_of(proxy)}"}),
            urllib.request.HTTPSHandler(context=client_context),
        )
        with opener.open(f"https://localhost:{tls_port}/again", timeout=10) as answer:
            assert answer.read() == b"hello over TLS"
        # a host outside the list: the tunnel is refused, the request never sent
        connection = http.client.HTTPSConnection("127.0.0.1", port_of(proxy), timeout=10)
        connection.set_tunnel("127.0.0.1", tls_port)
        with pytest.raises(OSError, match="403"):
            connection.request("GET", "/hello")
        connection.close()
    finally:
        stop_tls_server(server)
    assert server.paths == ["/hello", "/again"]


# ------------------------------------------------------------------------------------- errors


BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n"
TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status_line"),
    [
        (b"GARBAGE\r\n\r\n", BAD_REQUEST),
        (b"CONNECT example.com HTTP/1.1\r\n\r\n", BAD_REQUEST),  # no port
        (b"CONNECT example.com:443 HTTP/2.0\r\n\r\n", BAD_REQUEST),
        (b"CONNECT ex ample.com:443 HTTP/1.1\r\n\r\n", BAD_REQUEST),
        (b"CONNECT example.com:443 HTTP/1.1\r\nno colon here\r\n\r\n", BAD_REQUEST),
        (b"CONNECT example.com:443 HTTP/1.1\r\n", BAD_REQUEST),  # then EOF
        (b"CONNECT example.com:443 HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", TOO_LARGE),
        (b"CONNECT example.com:443 HTTP/1.1\r\nX-Huge: " + b"a" * 70_000, TOO_LARGE),  # no end
    ],
)
def test_a_malformed_or_oversized_head_is_answered_and_closed(
    loop: LoopThread, proxy_factory: list[EgressProxy], request_bytes: bytes, status_line: bytes
) -> None:
    proxy = start_proxy(loop, ["example.com:443"])
    proxy_factory.append(proxy)
    with connect(proxy) as sock:
        try:
            sock.sendall(request_bytes)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy may answer and close before all of a huge head is sent
        answer = read_all(sock)
    assert answer.startswith(status_line)
    assert b"Connection: close\r\n" in answer


def test_plain_http_requests_get_405(loop: LoopThread, proxy_factory: list[EgressProxy]) -> None:
    proxy = start_proxy(loop, ["example.com:80"])
    proxy_factory.append(proxy)
    answer = exchange(proxy, b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"Allow: CONNECT\r\n" in answer


def test_a_slow_head_is_cut(loop: LoopThread, proxy_factory: list[EgressProxy]) -> None:
    proxy = start_proxy(loop, ["example.com:443"], head_timeout_s=0.3)
    proxy_factory.append(proxy)
    with connect(proxy) as sock:
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\n")  # and never the empty line
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_an_unreachable_destination_is_answered_502(
    loop: LoopThread, proxy_factory: list[EgressProxy]
) -> None:
    dead = free_port()
    proxy = start_proxy(loop, [f"127.0.0.1:{dead}", "no-such-host.invalid:443"])
    proxy_factory.append(proxy)
    for target in (f"127.0.0.1:{dead}", "no-such-host.invalid:443"):
        answer = exchange(proxy, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer
        assert f"cannot reach {target}".encode() in answer


def test_tunnels_beyond_the_limit_get_503_and_close_cuts_open_ones(
    loop: LoopThread, echo_port: int
) -> None:
    proxy = start_proxy(loop, [f"127.0.0.1:{echo_port}"], max_tunnels=1)
    try:
        first = connect(proxy)
        first.sendall(f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\n\r\n".encode())
        assert read_head(first).startswith(b"HTTP/1.1 200 ")
        assert proxy.active == 1
        answer = exchange(proxy, f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        first.sendall(b"still open")
        assert first.recv(100) == b"still open"
    finally:
        loop.run(proxy.close())
    with first:
        assert read_all(first) == b""  # cut by close()
    assert proxy.active == 0


# ------------------------------------------------------------------- the supervisor's services


class _Launcher:
    """Just what host_uses_vsock asks of a launcher."""

    def __init__(self, address: str) -> None:
        self.address = address

    def enclave_address(self, port: int) -> str:
        return f"{self.address}:{port}"


def test_where_the_host_services_listen() -> None:
    assert host_uses_vsock(_Launcher("vsock://16"))  # type: ignore[arg-type]
    assert not host_uses_vsock(_Launcher("tcp://127.0.0.1"))  # type: ignore[arg-type]
    assert host_listen_address(8001, vsock=True) == "vsock://4294967295:8001"
    assert host_listen_address(8002, vsock=False) == "tcp://127.0.0.1:8002"


def test_in_development_the_services_listen_on_the_configured_loopback_ports(
    loop: LoopThread, make_config: Callable[..., Config]
) -> None:
    config = make_config()
    services = loop.run(start_host_services(config, vsock=False))
    try:
        assert [type(s) for s in services] == [EgressProxy, ImdsForwarder]
        assert [s.bound for s in services] == [
            f"tcp://127.0.0.1:{config.egress.port}",
            f"tcp://127.0.0.1:{config.egress.imds_port}",
        ]
        answer = exchange(services[0], b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")  # type: ignore[arg-type]
        assert answer.startswith(b"HTTP/1.1 403 ")
    finally:
        loop.run(stop_host_services(services))
    for port in (config.egress.port, config.egress.imds_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_taken_port_fails_naming_it_and_leaves_nothing_listening(
    loop: LoopThread, make_config: Callable[..., Config]
) -> None:
    config = make_config()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", config.egress.imds_port))
        taken.listen()
        with pytest.raises(
            EnclaveError, match=f"IMDS forwarder cannot listen on .*{config.egress.imds_port}"
        ):
            loop.run(start_host_services(config, vsock=False))
    with pytest.raises(ConnectionRefusedError):  # the egress proxy started first, then closed
        socket.create_connection(("127.0.0.1", config.egress.port), timeout=5).close()
