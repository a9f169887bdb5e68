"""The byte pumps over socket pairs (back-pressure, half-close both ways) and the vsock rules.

There is no vsock loopback on these machines: the pumps are exercised over ``socketpair`` streams,
on both event loops, and vsock itself only as far as binding a listener goes.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

import pytest
import uvloop

from enclave_core.streams import transport

T = TypeVar("T")
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(loop_name: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on that loop; a scenario stuck for 30 s fails instead of hanging."""
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(asyncio.wait_for(coro, 30))


async def stream_pair() -> tuple[socket.socket, asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw non-blocking socket and the asyncio streams of its peer."""
    outer, inner = socket.socketpair()
    outer.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=inner)
    return outer, reader, writer


async def recv_until_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while chunk := await loop.sock_recv(sock, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def poll(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_pump_stops_reading_while_the_destination_does_not_drain(loop_name: str) -> None:
    chunk = os.urandom(1024 * 1024)
    rounds = 32

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        a_out, a_reader, a_writer = await stream_pair()
        b_out, b_reader, b_writer = await stream_pair()
        sent = 0

        async def send() -> None:
            nonlocal sent
            for _ in range(rounds):
                await loop.sock_sendall(a_out, chunk)
                sent += len(chunk)
            a_out.shutdown(socket.SHUT_WR)

        pumping = asyncio.create_task(transport.pump(a_reader, b_writer))
        sender = asyncio.create_task(send())
        # Nobody reads b_out: the pump must stop reading from a, which pauses a's transport.
        a_transport = cast(asyncio.Transport, a_writer.transport)
        await poll(lambda: not a_transport.is_reading())
        assert not sender.done() and sent < rounds * len(chunk)
        assert b_writer.transport.get_write_buffer_size() <= 2 * transport.CHUNK

        # Now drain b: everything arrives, intact, then the half-close.
        received = await recv_until_eof(b_out)
        await sender
        assert await pumping == rounds * len(chunk)
        assert hashlib.sha256(received).digest() == hashlib.sha256(chunk * rounds).digest()
        for writer in (a_writer, b_writer):
            writer.close()
        for sock in (a_out, b_out):
            sock.close()
        del b_reader

    run(loop_name, scenario())


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
@pytest.mark.parametrize("first", ["a", "b"])
def test_splice_carries_a_half_close_each_way_while_the_other_flows(
    loop_name: str, first: str
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        a_out, a_reader, a_writer = await stream_pair()
        b_out, b_reader, b_writer = await stream_pair()
        splicing = asyncio.create_task(transport.splice((a_reader, a_writer), (b_reader, b_writer)))
        ends = {"a": a_out, "b": b_out}
        early, late = (ends[first], ends["b" if first == "a" else "a"])

        await loop.sock_sendall(early, b"first words")
        early.shutdown(socket.SHUT_WR)
        assert await recv_until_eof(late) == b"first words"  # then EOF: the half-close went over
        # The other direction still flows after that.
        await loop.sock_sendall(late, b"the answer, after the half-close")
        late.shutdown(socket.SHUT_WR)
        assert await recv_until_eof(early) == b"the answer, after the half-close"

        counts = await splicing
        expected = (11, 32) if first == "a" else (32, 11)  # (a -> b, b -> a)
        assert counts == expected
        assert a_writer.is_closing() and b_writer.is_closing()  # splice closed both
        for sock in (a_out, b_out):
            sock.close()

    run(loop_name, scenario())


def test_the_loop_factory_avoids_uvloop_for_vsock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(transport.LOOP_ENV, raising=False)
    assert transport.event_loop_factory(vsock=True) is None
    assert transport.event_loop_factory(vsock=False) is uvloop.new_event_loop


def test_enclave_event_loop_asyncio_picks_the_standard_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(transport.LOOP_ENV, "asyncio")
    assert transport.event_loop_factory(vsock=False) is None
    monkeypatch.setenv(transport.LOOP_ENV, "uvloop")  # never over vsock
    assert transport.event_loop_factory(vsock=True) is None
    assert transport.event_loop_factory(vsock=False) is uvloop.new_event_loop


def test_uvloop_cannot_carry_vsock_and_is_refused_clearly() -> None:
    async def scenario() -> None:
        # uvloop itself: it sets TCP_NODELAY on the vsock socket it adopts, which fails.
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        with pytest.raises(OSError) as failed:
            await asyncio.open_connection(sock=sock)
        assert failed.value.errno == errno.ENOPROTOOPT
        sock.close()
        # so the transport refuses vsock on uvloop before it tries
        with pytest.raises(OSError, match="standard asyncio event loop"):
            await transport.listen("vsock://4294967295:9", lambda r, w: asyncio.sleep(0))
        with pytest.raises(OSError, match="standard asyncio event loop"):
            await transport.connect("vsock://3:8001", timeout=1)
        with pytest.raises(OSError, match="standard asyncio event loop"):
            transport.listen_socket("vsock://4294967295:9")

    run("uvloop", scenario())


def test_on_the_standard_loop_a_vsock_listener_binds_every_cid() -> None:
    port = 20000 + os.getpid() % 20000

    async def scenario() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        try:
            server = await transport.listen(f"vsock://{transport.VSOCK_ANY_CID}:{port}", handler)
        except OSError as exc:  # a kernel without the vsock transport: refused, not crashed
            assert exc.errno in (errno.EAFNOSUPPORT, errno.ENODEV, errno.EADDRNOTAVAIL)
            return
        assert cast(asyncio.Server, server).sockets[0].getsockname() == (
            transport.VSOCK_ANY_CID,
            port,
        )
        # A second listener on the same port fails, and does not leak its socket.
        with pytest.raises(OSError) as taken:
            transport.listen_socket(f"vsock://{transport.VSOCK_ANY_CID}:{port}")
        assert taken.value.errno == errno.EADDRINUSE
        server.close()
        await server.wait_closed()

    run("asyncio", scenario())
