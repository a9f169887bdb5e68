"""TLS on the socket: an asyncio transport that reads and writes an ``ssl.SSLSocket`` directly.

asyncio's own TLS (``SSLProtocol``) pumps every record through memory BIOs in Python and leaves
each closed connection in a reference cycle that only a full garbage collection frees, with its
OpenSSL buffers; this transport lets OpenSSL read and write the non-blocking socket itself, one C
call per read or write, and holds no cycle. Same guarantees: the key stays in the process's
memory, the handshake is the context's (docs/architecture.md, "The HTTP server").
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import Any

READ_SIZE = 64 * 1024  # per read call (a TLS record holds at most 16 KiB of plaintext)
READS_PER_TURN = 16  # buffered plaintext is drained over several loop turns, not in one
WRITE_HIGH = 256 * 1024  # pause_writing above this many buffered bytes
WRITE_LOW = 64 * 1024  # resume_writing below this
_FATAL = (OSError, ssl.SSLError)
#: Every transport reads into this one buffer (one loop per process, and each read is copied
#: out before the next), so a read allocates only the bytes it returns.
_READ_VIEW = memoryview(bytearray(READ_SIZE))


async def accept_tls(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    context: ssl.SSLContext,
    timeout_s: float,
) -> ssl.SSLSocket:
    """Run the server side of the TLS handshake on an accepted, non-blocking socket.

    :raises TimeoutError: the handshake did not finish within ``timeout_s``.
    :raises OSError: the handshake failed (``ssl.SSLError`` included); the socket is closed.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # As asyncio's own transports do: a small answer must not wait for the client's ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    tls.do_handshake()
                    return tls
                except ssl.SSLWantReadError:
                    await _ready(loop, tls, writing=False)
                except ssl.SSLWantWriteError:
                    await _ready(loop, tls, writing=True)
    except BaseException:
        tls.close()
        raise


async def _ready(loop: asyncio.AbstractEventLoop, sock: socket.socket, *, writing: bool) -> None:
    waiter = loop.create_future()
    fd = sock.fileno()
    add, remove = (
        (loop.add_writer, loop.remove_writer) if writing else (loop.add_reader, loop.remove_reader)
    )
    add(fd, _wake, waiter)
    try:
        await waiter
    finally:
        remove(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class TlsTransport(asyncio.Transport):
    """A transport over a handshaken, non-blocking ``ssl.SSLSocket``.

    TLS has no half-close: :meth:`can_write_eof` is False, and an end of stream from the peer
    (close_notify or a bare FIN) goes to ``eof_received``.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, tls: ssl.SSLSocket, protocol: asyncio.Protocol
    ) -> None:
        super().__init__()
        self._loop = loop
        self._tls: ssl.SSLSocket | None = tls
        self._fd = tls.fileno()
        self._protocol = protocol
        self._extra = {
            "socket": tls,
            "ssl_object": tls,
            "peername": _peer(tls),
            "sockname": tls.getsockname(),
            "cipher": tls.cipher(),
            "compression": tls.compression(),
        }
        self._pending: bytes | None = None  # a write OpenSSL took in part: retried as it was
        self._queue: deque[bytes] = deque()
        self._buffered = 0
        self._reading = False
        self._writing = False  # a writer callback is registered
        self._write_paused = False
        self._closing = False
        self._lost = False
        self._high, self._low = WRITE_HIGH, WRITE_LOW

    def start(self) -> None:
        """Tell the protocol, then read."""
        self._protocol.connection_made(self)
        if not self._closing:
            self.resume_reading()

    # -- reading
    def _on_readable(self) -> None:
        tls = self._tls
        view = _READ_VIEW
        for _ in range(READS_PER_TURN):
            if tls is None or not self._reading:
                return
            try:
                # Into one buffer, then copied at its size: recv(n) would allocate n bytes each
                # time and shrink them, which costs the allocator more than the copy.
                data = view[: tls.recv_into(view)].tobytes()
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                return  # a renegotiation wants to write: the writer will run
            except ssl.SSLZeroReturnError:
                data = b""
            except _FATAL as exc:
                self._fatal(exc)
                return
            if not data:
                self._eof()
                return
            self._protocol.data_received(data)
            tls = self._tls
            if tls is None or not tls.pending():
                return  # nothing buffered: the socket says when more comes
        if self._reading and self._tls is not None:
            self._loop.call_soon(self._on_readable)  # more buffered: let others run first

    def _eof(self) -> None:
        self.pause_reading()
        keep_open = self._protocol.eof_received()
        if not keep_open:
            self.close()

    def pause_reading(self) -> None:
        """Stop calling ``data_received``."""
        if self._reading:
            self._reading = False
            if self._tls is not None:
                self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        """Call ``data_received`` again (what OpenSSL holds already comes first)."""
        if self._reading or self._closing or self._tls is None:
            return
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)
        if self._tls.pending():
            self._loop.call_soon(self._on_readable)

    def is_reading(self) -> bool:
        """Whether reading is on."""
        return self._reading

    # -- writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``, buffering what the socket cannot take now."""
        if self._closing or self._tls is None or not data:
            return
        if self._pending is None:
            try:
                self._tls.send(data)
                return
            except ssl.SSLWantWriteError:
                self._pending = bytes(data)
            except ssl.SSLWantReadError:
                self._pending = bytes(data)
            except _FATAL as exc:
                self._fatal(exc)
                return
            self._buffered = len(self._pending)
            self._start_writer()
        else:
            self._queue.append(bytes(data))
            self._buffered += len(data)
        self._check_high()

    def writelines(self, list_of_data: Any) -> None:
        """Send the pieces as one write."""
        self.write(b"".join(list_of_data))

    def _start_writer(self) -> None:
        if not self._writing and self._tls is not None:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        tls = self._tls
        while tls is not None and self._pending is not None:
            try:
                tls.send(self._pending)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except _FATAL as exc:
                self._fatal(exc)
                return
            self._buffered -= len(self._pending)
            self._pending = None
            if self._queue:
                joined = b"".join(self._queue)
                self._queue.clear()
                self._pending = joined
        self._writing = False
        if tls is not None:
            self._loop.remove_writer(self._fd)
        self._check_low()
        if self._closing:
            self._finish()

    def _check_high(self) -> None:
        if not self._write_paused and self._buffered > self._high and self._protocol is not None:
            self._write_paused = True
            self._protocol.pause_writing()

    def _check_low(self) -> None:
        if self._write_paused and self._buffered <= self._low and self._protocol is not None:
            self._write_paused = False
            self._protocol.resume_writing()

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet taken by the socket."""
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """(low, high) water marks."""
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks (defaults: 256 KiB and 64 KiB)."""
        self._high = WRITE_HIGH if high is None else high
        self._low = min(self._high, WRITE_LOW if low is None else low)

    def can_write_eof(self) -> bool:
        """TLS has no half-close."""
        return False

    def write_eof(self) -> None:
        """Not possible over TLS: close instead."""
        raise NotImplementedError("TLS connections cannot half-close")

    # -- closing
    def is_closing(self) -> bool:
        """Whether close or abort was called (or the connection failed)."""
        return self._closing

    def close(self) -> None:
        """Send what is buffered, then close_notify, then close the socket."""
        if self._closing:
            return
        self._closing = True
        self.pause_reading()
        if self._pending is None:
            self._finish()

    def abort(self) -> None:
        """Close now, dropping whatever is buffered."""
        self._closing = True
        self._pending = None
        self._queue.clear()
        self._buffered = 0
        self._teardown(None, notify=False)

    def _finish(self) -> None:
        self._teardown(None, notify=True)

    def _fatal(self, exc: Exception) -> None:
        self._closing = True
        self._pending = None
        self._queue.clear()
        self._buffered = 0
        self._teardown(exc if not isinstance(exc, ConnectionError) else None, notify=False)

    def _teardown(self, exc: Exception | None, *, notify: bool) -> None:
        tls, self._tls = self._tls, None
        if tls is not None:
            if self._reading:
                self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
            self._reading = self._writing = False
            if notify:
                try:
                    tls.unwrap()  # sends close_notify; the peer's answer is not awaited
                except (ssl.SSLError, OSError, ValueError):
                    pass
            tls.close()
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        protocol = self._protocol
        try:
            protocol.connection_lost(exc)
        finally:
            # The protocol usually holds this transport: let go of it so that no cycle remains.
            self._protocol = None  # type: ignore[assignment]
            self._extra = {}

    # -- the rest of the Transport interface
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``socket``, ``ssl_object``, ``peername``, ``sockname``, ``cipher``, ``compression``."""
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the connection to another protocol."""
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol served."""
        return self._protocol


def _peer(tls: ssl.SSLSocket) -> Any:
    try:
        return tls.getpeername()
    except OSError:
        return None
