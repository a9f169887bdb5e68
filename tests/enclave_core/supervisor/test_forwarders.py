"""The ingress forwarder against a real echo server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable

import pytest

from enclave_core.errors import EnclaveError
from enclave_core.supervisor.forwarders import IngressForwarder
from enclave_core.testing import free_port
from tests.enclave_core.supervisor.egress_helpers import echo_digest


def run_with_forwarder(
    body: Callable[[IngressForwarder, int], Awaitable[None]], *, target_port: int | None = None
) -> None:
    async def main() -> None:
        echo = await asyncio.start_server(echo_digest, "127.0.0.1", 0)
        port = echo.sockets[0].getsockname()[1]
        forwarder = IngressForwarder(
            f"127.0.0.1:{free_port()}", lambda: f"tcp://127.0.0.1:{target_port or port}"
        )
        await forwarder.start()
        try:
            await body(forwarder, int(forwarder.bound.rsplit(":", 1)[1]))
        finally:
            await forwarder.close()
            echo.close()
            await echo.wait_closed()

    asyncio.run(main())


def test_bytes_flow_both_ways_and_half_close_propagates() -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def body(forwarder: IngressForwarder, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def send() -> None:
            for i in range(0, len(payload), 100_000):
                writer.write(payload[i : i + 100_000])
                await writer.drain()
            writer.write_eof()  # half-close: we can still read

        sender = asyncio.create_task(send())
        received = await asyncio.wait_for(reader.read(-1), 30)  # until the server closes
        await sender
        writer.close()
        await writer.wait_closed()
        assert received[: len(payload)] == payload
        assert received[len(payload) :] == b"EOF " + hashlib.sha256(payload).hexdigest().encode()

    run_with_forwarder(body)


def test_several_connections_at_once() -> None:
    async def one(port: int, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        writer.write_eof()
        out = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        await writer.wait_closed()
        return out

    async def body(forwarder: IngressForwarder, port: int) -> None:
        datas = [f"client {i}".encode() * 1000 for i in range(10)]
        outs = await asyncio.gather(*(one(port, d) for d in datas))
        for data, out in zip(datas, outs, strict=True):
            assert out.startswith(data) and out[len(data) :].startswith(b"EOF ")

    run_with_forwarder(body)


def test_an_unreachable_enclave_closes_the_client_connection() -> None:
    async def body(forwarder: IngressForwarder, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(-1), 10) == b""
        writer.close()
        await writer.wait_closed()

    run_with_forwarder(body, target_port=free_port())


def test_an_unreachable_enclave_is_logged_once_per_burst() -> None:
    from loguru import logger

    lines: list[dict[str, object]] = []
    sink = logger.add(lambda message: lines.append(dict(message.record)), level="WARNING")

    async def body(forwarder: IngressForwarder, port: int) -> None:
        for _ in range(20):  # a client polling while the enclave starts
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(-1), 10) == b""
            writer.close()
            await writer.wait_closed()
        assert forwarder.unreached.count == 20

    try:
        run_with_forwarder(body, target_port=free_port())
    finally:
        logger.remove(sink)
    unreachable = [r for r in lines if "cannot reach the enclave" in str(r["message"])]
    assert len(unreachable) == 1
    assert unreachable[0]["extra"]["dropped"] == 1  # type: ignore[index]


def test_close_cuts_open_connections() -> None:
    async def body(forwarder: IngressForwarder, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
        await asyncio.wait_for(forwarder.close(), 5)
        assert await asyncio.wait_for(reader.read(-1), 10) == b""
        writer.close()
        await writer.wait_closed()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    run_with_forwarder(body)


def test_a_taken_address_fails_fast_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"

        async def main() -> None:
            with pytest.raises(EnclaveError, match=f"ingress cannot listen on {address}"):
                await IngressForwarder(address, lambda: "tcp://127.0.0.1:1").start()

        asyncio.run(main())
