"""Addresses and byte streams: ``vsock://CID:PORT``, ``tcp://HOST:PORT`` and ``unix:///path``.

The only module that touches ``AF_VSOCK``. Inside an enclave the public and control listeners are
vsock ports; in development every vsock address becomes loopback TCP and the same pumps move the
bytes. :func:`event_loop_factory` keeps vsock processes on asyncio's own loop (uvloop sets
``TCP_NODELAY``, which vsock refuses).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

CHUNK = 64 * 1024
#: Once one side of a splice is gone, how long the other has to write out what it still holds.
FLUSH_TIMEOUT_S = 60.0
#: How long a spliced connection may take none of what waits for it (nginx's send_timeout).
SEND_TIMEOUT_S = 60.0
#: After one side of a splice has sent its EOF, how long no byte may move either way.
HALF_CLOSED_IDLE_S = 60.0
#: Listen on every CID (``VMADDR_CID_ANY``): ``vsock://4294967295:PORT``.
VSOCK_ANY_CID = 0xFFFFFFFF
#: The parent EC2 instance, as seen from inside a Nitro Enclave.
VSOCK_PARENT_CID = 3

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class Address:
    """A parsed transport address."""

    scheme: str  # tcp, vsock, unix
    host: str = ""
    port: int = 0
    cid: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        if self.scheme == "vsock":
            return f"vsock://{self.cid}:{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``vsock://CID:PORT``, ``tcp://HOST:PORT``, ``unix:///path`` or bare ``HOST:PORT``."""
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path.startswith("/"):
            raise ValueError(f"unix address needs an absolute path: {text!r}")
        return Address("unix", path=path)
    scheme = "tcp"
    rest = text
    if "://" in text:
        scheme, rest = text.split("://", 1)
    host, sep, port_text = rest.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"invalid address {text!r}: expected {scheme}://HOST:PORT")
    port = int(port_text)
    if scheme == "vsock":
        if not host.isdigit():
            raise ValueError(f"invalid vsock address {text!r}: CID must be a number")
        return Address("vsock", cid=int(host), port=port)
    if scheme != "tcp":
        raise ValueError(f"unknown address scheme {scheme!r} in {text!r}")
    host = host.strip("[]")
    if not host:
        raise ValueError(f"invalid address {text!r}: missing host")
    return Address("tcp", host=host, port=port)


def _vsock_socket() -> socket.socket:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise OSError("AF_VSOCK is not supported on this platform")
    return socket.socket(family, socket.SOCK_STREAM)


def _refuse_uvloop() -> None:
    """OSError when the running loop is uvloop, which cannot carry vsock streams."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop yet: the caller picks one (event_loop_factory)
    if type(loop).__module__.startswith("uvloop"):
        raise OSError("vsock needs the standard asyncio event loop, not uvloop")


def _bind_vsock(addr: Address, backlog: int) -> socket.socket:
    _refuse_uvloop()
    sock = _vsock_socket()
    try:
        sock.bind((addr.cid, addr.port))
        sock.listen(backlog)
    except BaseException:
        sock.close()  # a taken port must not leak the socket
        raise
    sock.setblocking(False)
    return sock


#: ``asyncio`` forces the standard event loop (see :func:`event_loop_factory`).
LOOP_ENV = "ENCLAVE_EVENT_LOOP"


def event_loop_factory(*, vsock: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``asyncio.Runner``: uvloop, or None (the standard loop) with vsock.

    :param vsock: whether the process listens on or connects to ``vsock://`` addresses; uvloop
        cannot carry vsock streams (see the module docstring).

    ``ENCLAVE_EVENT_LOOP=asyncio`` picks the standard loop everywhere, so a development stack runs
    on the loop a Nitro Enclave uses (benchmarks compare the two this way).
    """
    if vsock or os.environ.get(LOOP_ENV, "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def listen(
    address: str | Address, handler: Handler, *, backlog: int = 1024, ssl: Any = None, **kw: Any
) -> asyncio.AbstractServer:
    """Start a stream server on ``address`` calling ``handler(reader, writer)`` per connection."""
    addr = parse_address(address) if isinstance(address, str) else address
    if addr.scheme == "tcp":
        return await asyncio.start_server(
            handler, addr.host, addr.port, backlog=backlog, ssl=ssl, reuse_address=True, **kw
        )
    if addr.scheme == "unix":
        return await asyncio.start_unix_server(handler, addr.path, backlog=backlog, ssl=ssl, **kw)
    sock = _bind_vsock(addr, backlog)
    try:
        return await asyncio.start_server(handler, sock=sock, ssl=ssl, **kw)
    except BaseException:
        sock.close()
        raise


def listen_socket(address: str | Address, backlog: int = 1024) -> socket.socket:
    """Create, bind and listen a non-blocking socket (for servers that take a socket)."""
    addr = parse_address(address) if isinstance(address, str) else address
    if addr.scheme == "vsock":
        return _bind_vsock(addr, backlog)
    if addr.scheme == "tcp":
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        target: Any = (addr.host, addr.port)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = addr.path
    try:
        sock.bind(target)
        sock.listen(backlog)
    except BaseException:
        sock.close()  # a taken address must not leak the socket
        raise
    sock.setblocking(False)
    return sock


async def connect(
    address: str | Address, *, timeout: float | None = 10.0, **kw: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a stream connection to ``address``."""
    addr = parse_address(address) if isinstance(address, str) else address
    if addr.scheme == "tcp":
        coro = asyncio.open_connection(addr.host, addr.port, **kw)
    elif addr.scheme == "unix":
        coro = asyncio.open_unix_connection(addr.path, **kw)
    else:
        coro = _vsock_connect(addr, **kw)
    # A timeout scope, not wait_for: no extra task per connection (the ingress opens one per
    # client connection).
    async with asyncio.timeout(timeout):
        return await coro


async def _vsock_connect(
    addr: Address, **kw: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    _refuse_uvloop()
    sock = _vsock_socket()
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (addr.cid, addr.port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, **kw)


def connect_sync(address: str | Address, timeout: float = 10.0) -> socket.socket:
    """Open a blocking socket connection to ``address`` (for synchronous clients)."""
    addr = parse_address(address) if isinstance(address, str) else address
    if addr.scheme == "tcp":
        return socket.create_connection((addr.host, addr.port), timeout=timeout)
    if addr.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = addr.path
    else:
        sock = _vsock_socket()
        target = (addr.cid, addr.port)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy bytes from ``reader`` to ``writer`` until EOF, honouring back-pressure.

    On EOF the write side is half-closed (``write_eof``) so the peer sees the end of the stream
    while the other direction keeps flowing. Returns the number of bytes copied.
    """
    total = 0
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            total += len(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
        pass
    finally:
        try:
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass
    return total


def unsent_bytes(fd: int) -> int | None:
    """Bytes in the kernel's send queue of socket ``fd`` (Linux ``SIOCOUTQ``), or None."""
    if fd < 0:
        return None
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0])
    except (OSError, ValueError):
        return None  # not a socket that reports it (vsock on older kernels)


def _fileno(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (OSError, ValueError):
        return -1


class _RelaySide(asyncio.Protocol):
    """One connection of a splice: what it reads goes straight to the other connection.

    The pair replaces the stream protocols once a splice begins, so each chunk costs one
    ``transport.write`` instead of a buffer copy and a coroutine hop through StreamReader.
    Back-pressure is the transports' own: when the peer's write buffer fills, reading from
    this side pauses until it drains.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        closed: asyncio.Future[None],
        send_timeout_s: float,
        half_closed_idle_s: float,
    ) -> None:
        self.transport = transport
        # The stream protocol it replaces still hears of the end, so the stream writer's
        # wait_closed() returns and the reader sees EOF.
        self.stream_protocol = transport.get_protocol()
        self.closed = closed  # set when this connection is gone
        self.peer: _RelaySide = self
        self.received = 0  # bytes read from this connection
        self.eof = False
        self.send_timeout_s = send_timeout_s
        self.half_closed_idle_s = half_closed_idle_s
        self.stall: asyncio.TimerHandle | None = None  # armed once this side's writing pauses
        self.paused_at: float | None = None  # when it last paused, while it is paused
        self.quiet: asyncio.TimerHandle | None = None  # armed once this side has sent its EOF
        self.unsent = -1  # the kernel's send queue when it paused, or progress was last seen
        self.fd = _fileno(transport)

    def data_received(self, data: bytes) -> None:
        """Relay to the peer (its transport buffers what the socket does not take at once)."""
        self.received += len(data)
        if not self.peer.transport.is_closing():
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        """Half-close the peer; keep this side open while the other direction still flows."""
        self.eof = True
        peer = self.peer.transport
        try:
            if peer.can_write_eof() and not peer.is_closing():
                peer.write_eof()  # sent once the peer's buffer has drained
        except (OSError, RuntimeError):
            pass
        if self.peer.eof:
            return False  # both directions are done: the transport closes
        # Half-closed: the other direction may go on, but not in silence for ever (a client
        # that keeps a connection the enclave has closed would hold a slot of the listener).
        self._watch_quiet(self.received + self.peer.received)
        return True

    def _watch_quiet(self, moved: int) -> None:
        loop = asyncio.get_running_loop()
        self.quiet = loop.call_later(self.half_closed_idle_s, self._check_quiet, moved)

    def _check_quiet(self, moved_then: int) -> None:
        moved = self.received + self.peer.received
        if moved != moved_then:
            self._watch_quiet(moved)
            return
        self.quiet = None
        self.transport.abort()
        self.peer.transport.abort()

    def pause_writing(self) -> None:
        """This connection reads slower than the peer sends: stop reading the peer, and give
        this one ``send_timeout_s`` to take something."""
        self.peer.transport.pause_reading()
        loop = asyncio.get_running_loop()
        self.paused_at = loop.time()
        unsent = unsent_bytes(self.fd)
        self.unsent = -1 if unsent is None else unsent
        if self.stall is None:  # one timer, re-armed lazily: pauses come and go by thousands
            self.stall = loop.call_later(self.send_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        """This connection's write buffer drained: read the peer again."""
        self.paused_at = None
        self.peer.transport.resume_reading()

    def _stalled(self) -> None:
        """A pause may have lasted ``send_timeout_s``: progress if the kernel's send queue moved
        (it wakes a writer only once a third of a large buffer is free), else the reader is gone
        in all but name."""
        self.stall = None
        if self.paused_at is None:
            return  # resumed since; the next pause arms a new timer
        loop = asyncio.get_running_loop()
        now = loop.time()
        left = self.paused_at + self.send_timeout_s - now
        unsent = unsent_bytes(self.fd)
        if left <= 0 and unsent is not None and unsent != self.unsent:
            self.paused_at, self.unsent, left = now, unsent, self.send_timeout_s
        if left > 0:  # a later pause, or progress: wait out the rest
            self.stall = loop.call_later(left, self._stalled)
            return
        self.transport.abort()  # connection_lost follows, and the peer is aborted below

    def connection_lost(self, exc: Exception | None) -> None:
        """Close the peer too, after it has written what it holds."""
        for timer in (self.stall, self.quiet):
            if timer is not None:
                timer.cancel()
        self.stall = self.quiet = None
        self.peer.transport.close()
        self.stream_protocol.connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)


_RELAY_NEEDS = ("set_protocol", "get_protocol", "pause_reading", "resume_reading", "write_eof")


def _relayable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether a connection can be handed to :class:`_RelaySide` (plain, open, a known reader)."""
    transport = writer.transport
    return (
        all(hasattr(transport, name) for name in _RELAY_NEEDS)  # uvloop's are not asyncio.Transport
        and not transport.is_closing()
        and writer.get_extra_info("sslcontext") is None
        and isinstance(getattr(reader, "_buffer", None), bytearray)
        and reader.exception() is None
    )


def _take_buffered(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """What the stream reader already holds, and whether it saw EOF; the reader is left empty."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]  # checked by _relayable
    data = bytes(buffer)
    buffer.clear()
    return data, reader.at_eof()


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    *,
    send_timeout_s: float = SEND_TIMEOUT_S,
    half_closed_idle_s: float = HALF_CLOSED_IDLE_S,
) -> tuple[int, int]:
    """Relay both directions between two connections until both end, then close both.

    Returns the bytes read from ``a`` and from ``b``. Half-close passes through in each
    direction; cancelling the splice aborts both connections. Both are cut when one takes
    none of what waits for it for ``send_timeout_s``; when, after one side's EOF, no byte moves
    either way for ``half_closed_idle_s``; and when, one side gone, the other cannot write out
    what it holds within ``FLUSH_TIMEOUT_S``.
    """
    if not (_relayable(*a) and _relayable(*b)):
        return await _splice_streams(a, b)
    loop = asyncio.get_running_loop()
    sides = [
        _RelaySide(
            writer.transport,  # type: ignore[arg-type]
            loop.create_future(),
            send_timeout_s,
            half_closed_idle_s,
        )
        for _reader, writer in (a, b)
    ]
    sides[0].peer, sides[1].peer = sides[1], sides[0]
    # Nothing runs between taking the buffers and swapping the protocols (no await), so no byte
    # can land in a stream reader that nobody reads any more.
    held = [_take_buffered(reader) for reader, _writer in (a, b)]
    for side in sides:
        side.transport.set_protocol(side)
        if not side.transport.is_closing():
            side.transport.resume_reading()  # the stream protocol may have paused it
    # Then the held bytes: relaying them may pause a side again (back-pressure), which must hold.
    for side, (data, eof) in zip(sides, held, strict=True):
        if data:
            side.data_received(data)
        if eof and not side.eof and not side.eof_received():
            side.transport.close()
    try:
        _done, pending = await asyncio.wait(
            [side.closed for side in sides], return_when=asyncio.FIRST_COMPLETED
        )
        if pending:  # one side is gone; the other may only write out what it holds
            _done, pending = await asyncio.wait(pending, timeout=FLUSH_TIMEOUT_S)
        if pending:  # a peer that reads nothing would keep it forever
            for side in sides:
                side.transport.abort()
            await asyncio.wait(pending)
    except asyncio.CancelledError:
        for side in sides:
            side.transport.abort()
        raise
    finally:
        for side in sides:
            side.transport.close()
    return sides[0].received, sides[1].received


async def _splice_streams(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> tuple[int, int]:
    """:func:`splice` through the stream API (TLS streams, or a connection already failing)."""
    try:
        up, down = await asyncio.gather(pump(a[0], b[1]), pump(b[0], a[1]))
        return up, down
    finally:
        for writer in (a[1], b[1]):
            writer.close()
        for writer in (a[1], b[1]):
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass
