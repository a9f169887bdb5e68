"""transport.splice: the byte relay behind ingress, the enclave's bridges and egress tunnels.

Every scenario runs on both event loops the project uses (asyncio's own on a Nitro host and in an
enclave, uvloop in development), over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from enclave_core.streams import transport

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {
    "asyncio": None,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a scenario on the event loop the test is parametrised with."""

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as loop_runner:
            return loop_runner.run(asyncio.wait_for(coro, 60))

    return runner


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.AbstractServer, int]:
    """A loopback server and its port."""
    server = await transport.listen("tcp://127.0.0.1:0", handler)
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return server, port


async def close_all(*servers: asyncio.AbstractServer) -> None:
    for server in servers:
        server.close()
        await server.wait_closed()


async def echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every byte upper-cased; after the client's EOF it still writes ``|END``."""
    while data := await reader.read(65536):
        writer.write(data.upper())
        await writer.drain()
    writer.write(b"|END")
    await writer.drain()
    writer.close()


@dataclass
class Relay:
    """A forwarder on loopback splicing each connection to a backend, as the ingress does."""

    port: int
    servers: list[asyncio.AbstractServer]
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # a splice returned
    results: list[tuple[int, int]] = field(default_factory=list)  # what each splice returned

    async def close(self) -> None:
        await close_all(*self.servers)


Prepare = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def start_relay(backend: Handler, prepare: Prepare | None = None, **options: Any) -> Relay:
    """``backend`` behind a forwarder; ``prepare`` runs on each client connection first."""
    backend_server, backend_port = await serve(backend)
    relay = Relay(0, [backend_server])

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if prepare is not None:
            await prepare(reader, writer)
        upstream = await transport.connect(f"tcp://127.0.0.1:{backend_port}")
        relay.results.append(await transport.splice((reader, writer), upstream, **options))
        await writer.wait_closed()  # the stream writer learns of the end too
        relay.ended.set()

    front, relay.port = await serve(forward)
    relay.servers.insert(0, front)
    return relay


def reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP reset (linger 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def small_window_client(port: int) -> socket.socket:
    """A non-blocking client socket with a 16 KiB receive buffer, connected to ``port``."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def test_bytes_flow_both_ways_and_half_close_passes_through(run: Callable[..., Any]) -> None:
    async def scenario() -> tuple[bytes, list[tuple[int, int]]]:
        relay = await start_relay(echo_upper)
        reader, writer = await transport.connect(f"tcp://127.0.0.1:{relay.port}")
        writer.write(b"abc" * 700_000)
        await writer.drain()
        writer.write_eof()  # half-close: the answer must still come back
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(relay.ended.wait(), 5)
        await relay.close()
        return answer, relay.results

    answer, results = run(scenario())
    assert answer == b"ABC" * 700_000 + b"|END"
    assert results == [(2_100_000, 2_100_004)]


def test_bytes_the_stream_reader_already_held_are_relayed_first(run: Callable[..., Any]) -> None:
    """As in egress: the handler reads a head, and what came after it must not be lost."""

    async def read_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(5) == b"HEAD|"

    async def scenario() -> bytes:
        relay = await start_relay(echo_upper, read_head)
        reader, writer = await transport.connect(f"tcp://127.0.0.1:{relay.port}")
        writer.write(b"HEAD|first bytes, sent with the head")
        await writer.drain()
        await asyncio.sleep(0.2)  # they sit in the forwarder's stream reader
        writer.write(b"; then more")
        writer.write_eof()
        answer = await reader.read()
        writer.close()
        await relay.close()
        return answer

    assert run(scenario()) == b"FIRST BYTES, SENT WITH THE HEAD; THEN MORE|END"


def test_an_eof_seen_before_the_splice_still_reaches_the_target(run: Callable[..., Any]) -> None:
    async def scenario() -> bytes:
        client_done = asyncio.Event()

        async def wait_for_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await client_done.wait()
            await asyncio.sleep(0.2)  # data and EOF are both in the stream reader by now

        relay = await start_relay(echo_upper, wait_for_eof)
        reader, writer = await transport.connect(f"tcp://127.0.0.1:{relay.port}")
        writer.write(b"all at once")
        writer.write_eof()
        await writer.drain()
        client_done.set()
        answer = await reader.read()
        writer.close()
        await relay.close()
        return answer

    assert run(scenario()) == b"ALL AT ONCE|END"


def test_a_slow_reader_holds_back_the_sender_instead_of_filling_memory(
    run: Callable[..., Any],
) -> None:
    size = 48 * 1024 * 1024
    buffered: list[int] = []

    async def blast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = os.urandom(1024 * 1024)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        writer.close()

    async def scenario() -> int:
        backend, backend_port = await serve(blast)

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream = await transport.connect(f"tcp://127.0.0.1:{backend_port}")
            relay = asyncio.ensure_future(transport.splice((reader, writer), upstream))
            while not relay.done():  # what the forwarder holds for the slow client
                buffered.append(writer.transport.get_write_buffer_size())
                await asyncio.sleep(0.005)
            await relay

        front, front_port = await serve(forward)
        reader, writer = await transport.connect(f"tcp://127.0.0.1:{front_port}")
        received = 0
        while chunk := await reader.read(256 * 1024):
            received += len(chunk)
            if received < size // 2:
                await asyncio.sleep(0.01)  # about 25 MB/s for the first half
        writer.close()
        await close_all(front, backend)
        return received

    assert run(scenario()) == size
    assert len(buffered) > 20
    # The stream moved 48 MiB; the forwarder never held more than a few socket reads of it.
    assert max(buffered) <= 4 * 1024 * 1024


def test_cancelling_a_splice_closes_both_connections(run: Callable[..., Any]) -> None:
    async def scenario() -> tuple[bytes, list[bytes]]:
        upstream_saw: list[bytes] = []
        upstream_has_hello = asyncio.Event()
        upstream_gone = asyncio.Event()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream_saw.append(await reader.readexactly(len(b"hello")))
                upstream_has_hello.set()
                upstream_saw.append(await reader.read())  # until the forwarder cuts it
            finally:
                upstream_gone.set()
                writer.close()

        backend, backend_port = await serve(hold)
        relays: list[asyncio.Future[tuple[int, int]]] = []
        writers: list[asyncio.StreamWriter] = []

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream = await transport.connect(f"tcp://127.0.0.1:{backend_port}")
            writers.append(writer)
            relays.append(asyncio.ensure_future(transport.splice((reader, writer), upstream)))
            with contextlib.suppress(asyncio.CancelledError):
                await relays[0]

        front, front_port = await serve(forward)
        reader, writer = await transport.connect(f"tcp://127.0.0.1:{front_port}")
        writer.write(b"hello")
        await writer.drain()
        await asyncio.wait_for(upstream_has_hello.wait(), 5)  # the splice relays, then is cut
        relays[0].cancel()
        client_saw = await reader.read()
        await asyncio.wait_for(upstream_gone.wait(), 5)
        await asyncio.wait_for(writers[0].wait_closed(), 5)  # does not hang after the swap
        writer.close()
        await close_all(front, backend)
        return client_saw, upstream_saw

    client_saw, upstream_saw = run(scenario())
    # Cancelling aborts both transports. Neither socket holds unread bytes by then (the client's
    # "hello" was relayed, the target sent nothing), so each peer sees a plain end of stream, not
    # a reset: the client reads nothing more, the target has "hello" and then EOF.
    assert client_saw == b""
    assert upstream_saw == [b"hello", b""]


def test_a_target_that_resets_ends_the_client_connection(run: Callable[..., Any]) -> None:
    async def reset_after_a_byte(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read(1)
        reset(writer)

    async def scenario() -> bytes:
        relay = await start_relay(reset_after_a_byte)
        reader, writer = await transport.connect(f"tcp://127.0.0.1:{relay.port}")
        writer.write(b"x")
        await writer.drain()
        try:
            seen = await reader.read()
        except ConnectionError:
            seen = b"reset"
        await asyncio.wait_for(relay.ended.wait(), 5)  # the splice returned, the client did nothing
        writer.close()
        await relay.close()
        return seen

    assert run(scenario()) in (b"", b"reset")


def test_a_target_that_closes_ends_the_splice_once_the_client_closes(
    run: Callable[..., Any],
) -> None:
    async def goodbye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"bye")
        writer.close()

    async def scenario() -> tuple[bytes, bool]:
        relay = await start_relay(goodbye)
        reader, writer = await transport.connect(f"tcp://127.0.0.1:{relay.port}")
        writer.write(b"x")
        await writer.drain()
        seen = await reader.read()  # "bye", then EOF: the half-close passed through
        await asyncio.sleep(0.2)
        open_while_client_open = not relay.ended.is_set()
        writer.close()
        await asyncio.wait_for(relay.ended.wait(), 5)
        await relay.close()
        return seen, open_while_client_open

    assert run(scenario()) == (b"bye", True)


def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(
    run: Callable[..., Any],
) -> None:
    """While its side is paused the relay reads nothing from the target, so it cannot even see
    the target go away: only the client's own stall ends the splice."""

    async def dump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = b"d" * (1024 * 1024)
        with contextlib.suppress(TimeoutError):
            for _ in range(32):  # until the forwarder stops taking it (its client reads nothing)
                writer.write(block)
                await asyncio.wait_for(writer.drain(), 1)
        reset(writer)  # and gone

    async def scenario() -> int:
        relay = await start_relay(dump, send_timeout_s=0.5)
        sock = await small_window_client(relay.port)
        await asyncio.wait_for(relay.ended.wait(), 10)  # the client read nothing; the splice ended
        received = 0
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5):
                received += len(chunk)
        sock.close()
        await relay.close()
        return received

    assert run(scenario()) < 32 * 1024 * 1024


def test_a_slow_but_steady_reader_is_not_cut(run: Callable[..., Any]) -> None:
    size = 2 * 1024 * 1024

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"s" * size)
        await writer.drain()
        writer.close()

    async def large_send_buffer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # As the kernel grows it on a long link: it wakes a writer only once a third of it is
        # free, so the relay stays paused for seconds at a time.
        client = writer.get_extra_info("socket")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024 * 1024)

    async def scenario() -> int:
        relay = await start_relay(send, large_send_buffer, send_timeout_s=1.0)
        sock = await small_window_client(relay.port)
        loop = asyncio.get_running_loop()
        received = 0
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 16384), 10):
            received += len(chunk)
            await asyncio.sleep(0.03)  # about 0.5 MB/s: slow, never idle
        sock.close()
        await relay.close()
        return received

    assert run(scenario()) == size


def test_a_silent_client_is_cut_once_the_target_has_closed(run: Callable[..., Any]) -> None:
    """A client that keeps a connection the enclave closed would hold a listener slot."""

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # as the runtime does with a connection that sent nothing in time

    async def scenario() -> bytes:
        relay = await start_relay(close_at_once, half_closed_idle_s=0.5)
        reader, writer = await transport.connect(f"tcp://127.0.0.1:{relay.port}")
        seen = await reader.read()  # the target's EOF, passed on; the client stays silent
        await asyncio.wait_for(relay.ended.wait(), 10)
        writer.close()
        await relay.close()
        return seen

    assert run(scenario()) == b""


def test_a_half_closed_client_gets_a_slow_answer_to_its_end(run: Callable[..., Any]) -> None:
    """The client's EOF starts the quiet clock, but an answer that keeps coming resets it."""

    async def slow_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        question = await reader.read()  # up to the client's EOF
        for i in range(8):
            await asyncio.sleep(0.2)
            writer.write(b"%d:%s;" % (i, question))
        writer.close()

    async def scenario() -> bytes:
        relay = await start_relay(slow_answer, half_closed_idle_s=1.0)
        reader, writer = await transport.connect(f"tcp://127.0.0.1:{relay.port}")
        writer.write(b"q")
        writer.write_eof()
        answer = await reader.read()  # 1.6 s in all, longer than the quiet limit of 1 s
        writer.close()
        await relay.close()
        return answer

    assert run(scenario()) == b"".join(b"%d:q;" % i for i in range(8))
