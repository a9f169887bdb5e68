"""TLS on the socket (enclave_core/http/tls.py): reading, writing with back-pressure, closing,
and no reference cycle left behind by a closed connection."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import gc
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from enclave_core.http.tls import TlsTransport, accept_tls
from enclave_core.runtime.tls import make_tls_identity

LOOPS = ["asyncio", "uvloop"]


def run(loop_name: str, main: Callable[[], Awaitable[Any]]) -> Any:
    factory = uvloop.new_event_loop if loop_name == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Recorder(asyncio.Protocol):
    """Keeps what arrives and the calls the transport makes."""

    def __init__(self) -> None:
        self.transport: TlsTransport | None = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost = asyncio.get_running_loop().create_future()
        self.on_data: Callable[[Recorder, bytes], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


async def serve_one(
    protocol: asyncio.Protocol,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, TlsTransport]:
    """A listening socket, one TLS client connected to it, and the server side's transport."""
    loop = asyncio.get_running_loop()
    identity = make_tls_identity("test")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    connecting = asyncio.ensure_future(
        asyncio.open_connection("127.0.0.1", port, ssl=client_context())
    )
    accepted, _ = await loop.sock_accept(listener)
    listener.close()
    accepted.setblocking(False)
    tls = await accept_tls(loop, accepted, identity.context, 5.0)
    transport = TlsTransport(loop, tls, protocol)
    transport.start()
    reader, writer = await connecting
    return reader, writer, transport


@pytest.mark.parametrize("loop_name", LOOPS)
def test_bytes_cross_both_ways_and_close_sends_close_notify(loop_name: str) -> None:
    async def main() -> None:
        server = Recorder()
        reader, writer, transport = await serve_one(server)
        writer.write(b"ping")
        await writer.drain()
        while bytes(server.data) != b"ping":
            await asyncio.sleep(0.01)
        transport.write(b"pong")
        transport.writelines([b" and", b" more"])
        assert await reader.readexactly(13) == b"pong and more"
        assert transport.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert transport.get_extra_info("cipher") is not None
        transport.close()
        assert transport.is_closing()
        assert await reader.read() == b""  # close_notify: a clean end of stream
        assert await server.lost is None
        assert server.events == ["made", "lost"]
        writer.close()

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_large_write_pauses_the_writer_and_arrives_whole(loop_name: str) -> None:
    async def main() -> None:
        server = Recorder()
        reader, writer, transport = await serve_one(server)
        payload = bytes(range(256)) * 16384  # 4 MiB: far beyond the socket buffers
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        assert server.events[-1] == "pause_writing"
        received = await reader.readexactly(len(payload))
        assert received == payload
        while transport.get_write_buffer_size():
            await asyncio.sleep(0.01)
        assert server.events[-1] == "resume_writing"
        transport.close()
        await server.lost
        writer.close()

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_paused_reading_delivers_what_openssl_holds_on_resume(loop_name: str) -> None:
    async def main() -> None:
        server = Recorder()

        def pause_after_first(protocol: Recorder, data: bytes) -> None:
            assert protocol.transport is not None
            protocol.transport.pause_reading()

        server.on_data = pause_after_first
        reader, writer, transport = await serve_one(server)
        # Several records in one go: OpenSSL decrypts more than the first read returns.
        for piece in (b"a" * 100, b"b" * 100, b"c" * 100):
            writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.2)
        first = len(server.data)
        assert 0 < first < 300 and not transport.is_reading()
        server.on_data = None
        transport.resume_reading()
        while len(server.data) < 300:
            await asyncio.sleep(0.01)
        assert bytes(server.data) == b"a" * 100 + b"b" * 100 + b"c" * 100
        transport.abort()
        await server.lost
        writer.close()

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_peers_end_of_stream_reaches_eof_received(loop_name: str) -> None:
    async def main() -> None:
        server = Recorder()
        _, writer, _ = await serve_one(server)
        writer.close()  # close_notify, then FIN
        assert await server.lost is None
        assert server.events == ["made", "eof", "lost"]

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_handshake_that_never_comes_times_out_and_closes_the_socket(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        silent = socket.create_connection(listener.getsockname())  # never says ClientHello
        accepted, _ = await loop.sock_accept(listener)
        accepted.setblocking(False)
        with pytest.raises(TimeoutError):
            await accept_tls(loop, accepted, make_tls_identity("test").context, 0.2)
        assert accepted.fileno() == -1
        silent.settimeout(2)
        assert silent.recv(1) == b""
        silent.close()
        listener.close()

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_closed_connection_is_freed_without_the_garbage_collector(loop_name: str) -> None:
    # asyncio's own TLS leaves each closed connection in a reference cycle (its transport and
    # protocol point at each other), holding OpenSSL's buffers until a full collection: with
    # thousands of short connections the runtime grew by tens of MiB. Here refcounting frees it.
    async def main() -> list[weakref.ref[Any]]:
        refs = []
        for _ in range(5):
            server = Recorder()
            reader, writer, transport = await serve_one(server)
            writer.write(b"x")
            await writer.drain()
            transport.close()
            await reader.read()
            await server.lost
            writer.close()
            await writer.wait_closed()
            refs += [weakref.ref(server), weakref.ref(transport)]
            del server, transport, reader, writer
            await asyncio.sleep(0)
        return refs

    gc.collect()
    gc.disable()
    try:
        refs = run(loop_name, main)
        assert [ref() for ref in refs] == [None] * len(refs)
    finally:
        gc.enable()


def test_a_tls_listener_keeps_no_closed_connection_alive() -> None:
    # The listener as the runtime runs it: every closed TLS connection and its OpenSSL state
    # are freed at once, not left for the garbage collector (the soak benchmark's growth).
    from enclave_core.http import connection
    from enclave_core.http.listener import AsgiListener

    made: list[weakref.ref[Any]] = []
    original = connection.ClientConnection.__init__

    def recording_init(self: Any, server: Any) -> None:
        original(self, server)
        made.append(weakref.ref(self))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> None:
        listener = AsgiListener(app, name="test", ssl_context=make_tls_identity("test").context)
        await listener.start("tcp://127.0.0.1:0")
        for _ in range(20):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", listener.port, ssl=client_context()
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await reader.read()).endswith(b"\r\n\r\nok")
            writer.close()
            await writer.wait_closed()
        while listener.connections:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert [ref() for ref in made] == [None] * 20
        tls_kinds = (ssl.SSLObject, ssl.SSLSocket, asyncio.sslproto.SSLProtocol)
        assert [o for o in gc.get_objects() if isinstance(o, tls_kinds)] == []
        await listener.close()

    gc.collect()
    gc.disable()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(connection.ClientConnection, "__init__", recording_init)
            run("asyncio", main)
    finally:
        gc.enable()
