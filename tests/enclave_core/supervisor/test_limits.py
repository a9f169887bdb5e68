"""supervisor.limits on the management API and an ingress listener: `enclave dev`, raw sockets.

Three development stacks (supervisor, runtime and the example app, for real), each started once
for the module: ``tight`` (small sizes and sub-second timeouts under ``supervisor:`` and
``runtime:``), ``crowded`` (``supervisor.limits.max_connections: 4``) and ``stock`` (defaults).
An ingress forwarder never reads the bytes it forwards: max_connections applies to it, and
send_timeout_s and idle_timeout_s to a relayed connection one side stopped reading or has ended;
a slow client through it meets the runtime's public listener and its limits.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import DevStack, make_stack
from tests.enclave_core.http.test_limits import (
    TIGHT,
    Listener,
    assert_refused_with,
    assert_served_beside_idle_connections,
    hold,
    open_idle,
    read_response,
    read_until_closed,
    served,
    trickle,
    wait_for,
)

pytestmark = pytest.mark.e2e


def start_stack(folder: Path, **overrides: Any) -> Iterator[DevStack]:
    yield from make_stack(folder, **overrides).running()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    folder = tmp_path_factory.mktemp("tight") / "hello"
    # the management API's routes read at most 64 KiB of JSON: a smaller listener limit shows
    supervisor = {**TIGHT, "max_body_bytes": 16384}
    yield from start_stack(folder, supervisor={"limits": supervisor}, runtime={"limits": TIGHT})


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    folder = tmp_path_factory.mktemp("crowded") / "hello"
    yield from start_stack(folder, supervisor={"limits": {"max_connections": 4}})


@pytest.fixture(scope="module")
def crowded_tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """Four ingress connections at most, and the runtime closes silent ones within 0.5 s."""
    folder = tmp_path_factory.mktemp("crowded_tight") / "hello"
    supervisor = {"max_connections": 4, "idle_timeout_s": 1.0}
    yield from start_stack(folder, supervisor={"limits": supervisor}, runtime={"limits": TIGHT})


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    yield from start_stack(tmp_path_factory.mktemp("stock") / "hello")


def api(dev: DevStack) -> Listener:
    """The management API, with its token; uploads go to /v1/migrate, whose body (JSON) is read
    before anything starts: these tests never let one arrive whole."""
    port = int(dev.document["supervisor"]["listen"].rsplit(":", 1)[1])
    auth = f"Authorization: Bearer {dev.token}\r\n"
    return Listener("management API", port, False, "/metrics", 200, "POST /v1/migrate", auth)


def ingress(dev: DevStack) -> Listener:
    """The ingress listener, forwarding to the runtime's public listener (plain HTTP in dev)."""
    port = int(dev.document["supervisor"]["ingress"][0]["listen"].rsplit(":", 1)[1])
    return Listener("ingress", port, False, "/health", 200, "POST /upload")


# -- the management API: sizes and slow clients ------------------------------------------------
@pytest.mark.parametrize("pieces", [1, 16])
def test_a_head_beyond_max_header_bytes_gets_431(tight: DevStack, pieces: int) -> None:
    listener = api(tight)
    head = f"GET {listener.get} HTTP/1.1\r\nHost: test\r\nX-Big: {'b' * 8000}\r\n\r\n".encode()
    step = -(-len(head) // pieces)
    with listener.connect() as sock:
        reply = trickle(sock, [head[i : i + step] for i in range(0, len(head), step)], 0.01)
    error = assert_refused_with(reply, 431, "Request header fields too large")
    assert error["description"] == "the request head exceeds 4096 bytes"


def test_a_declared_body_beyond_max_body_bytes_gets_413(tight: DevStack) -> None:
    listener = api(tight)
    with listener.connect() as sock:
        sock.sendall(listener.upload_head("Content-Length: 100000") + b"{}")
        reply = read_until_closed(sock)
    error = assert_refused_with(reply, 413, "Payload too large")
    assert error["description"] == "the body exceeds 16384 bytes"


def test_a_chunked_body_beyond_max_body_bytes_gets_413(tight: DevStack) -> None:
    listener = api(tight)
    chunk = b"4000\r\n" + b"c" * 0x4000 + b"\r\n"
    with listener.connect() as sock:
        sock.sendall(listener.upload_head("Transfer-Encoding: chunked"))
        reply = trickle(sock, [chunk] * 5 + [b"0\r\n\r\n"], 0.01)
    assert_refused_with(reply, 413, "Payload too large")


def test_a_head_sent_slowly_gets_408_and_close(tight: DevStack) -> None:
    listener = api(tight)
    lines = [f"GET {listener.get} HTTP/1.1\r\nHost: test\r\n".encode()]
    lines += [b"X-Slow: %d\r\n" % i for i in range(300)]
    with listener.connect() as sock:
        reply = trickle(sock, lines, 0.1)
    error = assert_refused_with(reply, 408, "Request timeout")
    assert error["description"] == "the request head did not arrive within 0.5 s"


def test_a_body_sent_slowly_gets_408_and_close(tight: DevStack) -> None:
    listener = api(tight)
    with listener.connect() as sock:
        sock.sendall(listener.upload_head("Content-Length: 1000"))
        reply = trickle(sock, [b" "] * 1000, 0.1)
    error = assert_refused_with(reply, 408, "Request timeout")
    assert error["description"] == "the request did not arrive within 1.5 s"


def test_silent_and_idle_connections_are_closed(tight: DevStack) -> None:
    listener = api(tight)
    with listener.connect() as sock:
        assert read_until_closed(sock) == b""  # nothing sent: closed after the head timeout
    with listener.connect() as sock:
        sock.sendall(listener.request())
        status, headers, _ = read_response(sock)
        assert status == 200 and headers.get("connection") != "close"
        assert read_until_closed(sock) == b""  # idle after an answer: closed, no answer


def test_a_slow_client_through_ingress_meets_the_runtimes_limits(tight: DevStack) -> None:
    listener = ingress(tight)
    lines = [b"GET / HTTP/1.1\r\nHost: test\r\n"] + [b"X-Slow: 1\r\n"] * 300
    with listener.connect() as sock:
        reply = trickle(sock, lines, 0.1)
    assert_refused_with(reply, 408, "Request timeout")
    with listener.connect() as sock:
        assert read_until_closed(sock) == b""


# -- connections -------------------------------------------------------------------------------
@pytest.mark.parametrize("which", [api, ingress], ids=["management API", "ingress"])
def test_beyond_max_connections_a_connection_is_closed_at_accept(
    crowded: DevStack, which: Any
) -> None:
    listener: Listener = which(crowded)
    held: list[socket.socket] = []
    try:
        for _ in range(4):
            held.append(hold(listener))
        assert not served(listener)  # a fifth is closed without an answer
        held[0].sendall(listener.request())
        assert read_response(held[0])[0] == listener.status
        held.pop().close()
        wait_for(lambda: served(listener))
    finally:
        for sock in held:
            sock.close()


def test_clients_that_keep_connections_the_enclave_closed_do_not_lock_out_the_ingress(
    crowded_tight: DevStack,
) -> None:
    listener = ingress(crowded_tight)
    silent = open_idle(listener.port, 4)  # every slot; they send nothing, never close
    try:
        for sock in silent:  # the runtime's head timeout ends each: the EOF comes through
            assert read_until_closed(sock) == b""
        # still open on the client's side: the ingress lets them go once quiet for 1 s
        wait_for(lambda: served(listener))
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.parametrize("which", [api, ingress], ids=["management API", "ingress"])
def test_500_idle_connections_do_not_lock_out_a_client(stock: DevStack, which: Any) -> None:
    assert_served_beside_idle_connections(which(stock), 500)
