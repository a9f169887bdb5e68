"""Transport addresses and the byte pumps (TCP here; vsock uses the same code paths)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from enclave_core.streams import transport


def test_parse_addresses() -> None:
    assert str(transport.parse_address("vsock://16:7073")) == "vsock://16:7073"
    assert transport.parse_address("tcp://127.0.0.1:80").port == 80
    assert transport.parse_address("0.0.0.0:443").host == "0.0.0.0"
    assert transport.parse_address("unix:///run/x.sock").path == "/run/x.sock"
    for bad in ("vsock://x:1", "tcp://host", "ftp://a:1", "unix://rel", "tcp://:80"):
        with pytest.raises(ValueError):
            transport.parse_address(bad)


def test_vsock_socket_can_be_created_or_is_refused_clearly() -> None:
    if hasattr(socket, "AF_VSOCK"):
        sock = transport._vsock_socket()
        sock.close()
    else:  # pragma: no cover - non-Linux
        with pytest.raises(OSError):
            transport._vsock_socket()


def test_splice_streams_both_ways_and_propagates_half_close() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        received = bytearray()

        async def echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                received.extend(data)
                writer.write(data.upper())
                await writer.drain()
            # The client half-closed: we can still answer.
            writer.write(b"|END")
            await writer.drain()
            writer.close()

        backend = await transport.listen("tcp://127.0.0.1:0", echo_upper)
        backend_port = backend.sockets[0].getsockname()[1]

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream = await transport.connect(f"tcp://127.0.0.1:{backend_port}")
            await transport.splice((reader, writer), upstream)

        front = await transport.listen("tcp://127.0.0.1:0", forward)
        front_port = front.sockets[0].getsockname()[1]
        reader, writer = await transport.connect(f"tcp://127.0.0.1:{front_port}")
        payload = b"abc" * 200_000
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        for server in (front, backend):
            server.close()
            await server.wait_closed()
        return bytes(received), answer

    received, answer = asyncio.run(scenario())
    assert received == b"abc" * 200_000
    assert answer == b"ABC" * 200_000 + b"|END"
