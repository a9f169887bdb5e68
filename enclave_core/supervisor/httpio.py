"""Small HTTP/1.1 pieces shared by the egress proxy and the IMDS forwarder.

Both read one bounded request head (8 KiB, 10 s), answer errors themselves and then either splice
or relay bytes. :class:`ConnectionServer` is their common listener: it tracks every connection so
``close`` can cut them, and answers 503 beyond a maximum number of simultaneous connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from loguru import logger

from enclave_core.streams.splice import TrackedServer, close_writer

HEAD_LIMIT = 8 * 1024
HEAD_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 256
LINGER_S = 1.0
LINGER_LIMIT = 1024 * 1024
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token (method, header name)
_VERSION = re.compile(r"^HTTP/1\.[01]$")


class HttpError(Exception):
    """A request refused before it is forwarded: ``status`` and a short, value-free reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Head:
    """A parsed HTTP/1.x head: request (method, target, version) or response (status line)."""

    first_line: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def request_line(self) -> tuple[str, str, str]:
        """``(method, target, version)``; HttpError 400 when malformed."""
        parts = self.first_line.split(" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
            raise HttpError(400, "malformed request line")
        if not _VERSION.match(parts[2]):
            raise HttpError(400, "unsupported HTTP version")
        return parts[0], parts[1], parts[2]


async def read_head(
    reader: asyncio.StreamReader, *, limit: int = HEAD_LIMIT, timeout_s: float = HEAD_TIMEOUT_S
) -> Head:
    """Read and parse one head ending in an empty line.

    :raises HttpError: 400 when malformed, 431 when longer than ``limit`` bytes, 408 when it
        does not arrive within ``timeout_s``.
    :raises EOFError: the peer closed before sending anything.
    """
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    except TimeoutError:
        raise HttpError(408, "request head not received in time") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise EOFError from None
        raise HttpError(400, "incomplete request head") from None
    if len(raw) > limit:
        raise HttpError(431, "request head too large")
    return parse_head(raw)


def parse_head(raw: bytes) -> Head:
    """Parse the bytes of a head (first line, ``Name: value`` lines); HttpError 400 if invalid."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "non-ASCII request head") from None
    lines = text[: -len("\r\n\r\n")].split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise HttpError(400, "malformed header line")
        headers.append((name, value.strip(" \t")))
    return Head(lines[0], headers)


def render_head(first_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The bytes of a head: the first line, the headers and the empty line."""
    lines = [first_line, *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def respond(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    status: int,
    message: str,
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    """Write a short ``text/plain`` answer with ``Connection: close``, then close the connection.

    Unread request bytes are drained for up to a second first (a lingering close): closing a
    socket with unread input sends a reset, which can destroy the answer before the client reads it.
    """
    body = (message + "\n").encode("utf-8")
    head = render_head(
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *headers,
        ],
    )
    with contextlib.suppress(OSError, RuntimeError):
        writer.write(head + body)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_discard(reader), LINGER_S)
    await close_writer(writer)


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read and drop input until EOF, or until ``LINGER_LIMIT`` bytes (then give up)."""
    total = 0
    while total < LINGER_LIMIT and (chunk := await reader.read(65536)):
        total += len(chunk)


class ConnectionServer(TrackedServer):
    """A listener whose connections are tracked, bounded in number and cut by :meth:`close`."""

    def __init__(self, listen: str, *, max_connections: int = MAX_CONNECTIONS) -> None:
        """:param listen: ``tcp://HOST:PORT`` or ``vsock://CID:PORT``."""
        super().__init__(listen)
        self.max_connections = max_connections

    async def admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Refuse (503) beyond ``max_connections``."""
        if len(self._connections) < self.max_connections:
            return True
        logger.bind(limit=self.max_connections).warning(f"{self.kind} is at its limit")
        await respond(reader, writer, 503, f"too many connections to the {self.kind}")
        return False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Run :meth:`handle`; one connection's failure never reaches the server."""
        try:
            await self.handle(reader, writer)
        except Exception as exc:  # one connection's failure must not reach the server
            logger.bind(error=type(exc).__name__).warning(f"{self.kind} connection failed")
            await close_writer(writer)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (subclasses); the writer is theirs to close."""
        raise NotImplementedError
