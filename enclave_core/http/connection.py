"""The client side of every listener: an HTTP/1.1 server protocol on asyncio and httptools.

One :class:`ClientConnection` per accepted connection answers requests strictly in order
(pipelining-safe), reading at most one read ahead. The limits of
:class:`~enclave_core.config.LimitsSettings` are checked where they cost least: body size per
piece, head size from the reads it spans, timeouts in the listener's periodic sweep
(:meth:`ClientConnection.expire`), never by a timer per request.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import Any, Protocol

import httptools
from loguru import logger

from enclave_core.config import LimitsSettings
from enclave_core.http.exchange import (
    PAUSE_BUFFER,
    PAUSE_DEAD,
    PAUSE_PIPELINE,
    PAUSE_UPSTREAM,
    ErrorSigner,
    Exchange,
    error_response,
    half_close,
)
from enclave_core.log import BurstCounter
from enclave_core.metrics import Metrics
from enclave_core.streams.transport import unsent_bytes


class Listener(Protocol):
    """What a connection needs of the listener that accepted it (:mod:`enclave_core.http.listener`).

    Declared here, where it is used, so that this module imports no listener.
    """

    loop: asyncio.AbstractEventLoop
    name: str
    limits: LimitsSettings
    max_body_bytes: int
    max_header_bytes: int
    own_max_body: int
    metrics: Metrics
    ssl_context: ssl.SSLContext | None
    error_signer: ErrorSigner | None
    connections: set[ClientConnection]
    cut: BurstCounter
    closing: bool
    debug: bool

    def dispatch(self, conn: ClientConnection, ex: Exchange) -> None:
        """Route a complete request head."""


class AppSide(Protocol):
    """The app's end of an exchange or tunnel: an :class:`~enclave_core.http.upstream.Upstream`."""

    transport: asyncio.Transport
    peer_eof: bool

    def close(self) -> None:
        """Close the connection to the app."""

    def pause_reading(self) -> None:
        """Stop reading the app's answer."""

    def resume_reading(self) -> None:
        """Read the app's answer again."""


BUFFER_HIGH = 256 * 1024  # pause reading a body nobody consumes yet beyond this
DISCARD_LIMIT = 4 << 20  # request body read and dropped after an early answer, then close
LINGER_S = 2.0  # after our FIN, unread input is drained this long so it causes no reset


class ClientConnection(asyncio.Protocol):
    """One client connection of the public listener."""

    def __init__(self, server: Listener) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Exchange | None = None
        self.pipeline: deque[Exchange] = deque()
        self.raw: Exchange | None = None  # the upgrade request once the parser has stopped
        self.tunnel: AppSide | None = None  # after a 101: bytes flow through untouched
        self.bound: AppSide | None = None  # the upstream answering the current request
        self.paused = 0
        self.write_paused = False
        self.write_paused_at = 0.0  # when the client last took something while we waited on it
        self.unsent = -1  # the kernel's send queue when last looked at (-1: unknown)
        self.fd = -1
        self.tunnel_moved = 0  # reads either way through a tunnel (counted, never timed)
        self.tunnel_seen = 0  # that count at the last sweep
        self.tunnel_quiet = 0.0  # seconds since it last changed
        self.closed = False
        self.eof = False
        self.advancing = False
        self.head_bytes = 0  # bytes of the reads the current, unfinished head spans so far
        self.head_first = 0  # of those, the bytes of the read it began in (maybe not all its own)
        self.read_size = 0  # the read being parsed
        self.max_head = server.max_header_bytes
        self.linger: asyncio.TimerHandle | None = None
        # the answer to the last request was written then (or the connection was accepted then)
        self.idle_since = self.opened = self.loop.time()
        self.client: tuple[str, int] | None = None
        self.client_ip = b"unknown"

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the peer; switch off Nagle so small answers leave at once."""
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock is not None:
            self.fd = sock.fileno()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
            self.client_ip = self.client[0].encode()
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop whatever this connection's requests still have running."""
        self.closed = True
        self.server.connections.discard(self)
        if self.linger is not None:
            self.linger.cancel()
        if self.tunnel is not None:
            self.tunnel.close()
        for ex in self.pipeline:
            self._stop(ex)
        self.pipeline.clear()
        # The parser calls back into this object: drop it, so refcounting frees the connection
        # (and whatever its transport holds) now rather than at the next full collection.
        self.parser = self.parsing = self.raw = None  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Feed the parser; after an upgrade, pass bytes through."""
        if self.closed:
            return  # lingering: drop what the client still sends
        if self.tunnel is not None:
            self.tunnel_moved += 1
            self.tunnel.transport.write(data)
            return
        if self.raw is not None:
            self._body(self.raw, data)
            return
        self.read_size = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :])
            return
        except httptools.HttpParserCallbackError:
            logger.opt(exception=True).error(f"{self.server.name}: request handling failed")
            self._malformed(500, "Internal error", "the request could not be handled")
            return
        except httptools.HttpParserError as exc:
            self._malformed(400, "Bad request", f"malformed HTTP request: {exc}")
            return
        ex = self.parsing
        if ex is not None and not ex.method:  # a head still incomplete: bound what it holds
            n = self.head_bytes
            if not n:
                self.head_first = len(data)
            n = self.head_bytes = n + len(data)
            # The read it began in may hold earlier requests too: past the limit, only the reads
            # wholly inside this head, or its fields parsed so far, prove it too large.
            limit = self.max_head
            if n > limit and (n - self.head_first > limit or ex.head_size() > limit):
                self._malformed(431, *_head_too_large(limit))

    def eof_received(self) -> bool:
        """Half-close: finish the answers in flight (plain TCP only), then close."""
        if self.closed:
            return False
        self.eof = True
        up = self.tunnel
        if up is not None:  # pass the half-close on; close once both sides have ended
            if up.peer_eof or self.server.ssl_context or not half_close(up.transport):
                up.close()
                return False
            return True
        ex = self.parsing
        if ex is not None and ex.method and not ex.complete:
            return False  # a request body cut short: it can never be answered
        return bool(self.pipeline) and self.server.ssl_context is None

    def pause_writing(self) -> None:
        """The client reads slower than the app answers: stop reading the app."""
        self.write_paused = True
        self.write_paused_at = self.loop.time()
        unsent = unsent_bytes(self.fd)
        self.unsent = -1 if unsent is None else unsent
        up = self.tunnel or self.bound
        if up is not None:
            up.pause_reading()

    def resume_writing(self) -> None:
        """The client caught up: read the app again."""
        self.write_paused = False
        up = self.tunnel or self.bound
        if up is not None:
            up.resume_reading()

    # -- httptools callbacks
    def on_url(self, url: bytes) -> None:
        """The request target, possibly in pieces; its first piece starts a new request."""
        ex = self.parsing
        if ex is None or ex.method:  # (no on_message_begin: one callback less per request)
            ex = self.parsing = Exchange()
            self.head_bytes = 0
        ex.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header (trailers after a chunked body are ignored)."""
        ex = self.parsing
        if ex is not None and not ex.method:
            ex.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Queue the request; handle it now if nothing is ahead of it."""
        ex = self.parsing
        assert ex is not None
        if self.closed:
            return
        ex.method = self.parser.get_method()
        ex.version = self.parser.get_http_version()
        ex.keep_alive = self.parser.should_keep_alive()
        if self.server.debug:
            ex.started = self.loop.time()
        limit = self.max_head
        # the reads this head spans bound its size; count it exactly only past the limit
        if self.head_bytes + self.read_size > limit and ex.head_size() > limit:
            ex.error = (431, *_head_too_large(limit))
        else:
            try:
                ex.classify()
            except ValueError:
                ex.error = (400, "Bad request", "invalid Content-Length")
        self.pipeline.append(ex)
        if len(self.pipeline) == 1:
            self.server.dispatch(self, ex)
        else:
            self.pause(PAUSE_PIPELINE)

    def on_body(self, data: bytes) -> None:
        """A piece of the current request's body."""
        if not self.closed:
            self._body(self.parsing, data)  # type: ignore[arg-type]

    def on_message_complete(self) -> None:
        """The current request has been read entirely."""
        ex = self.parsing
        assert ex is not None
        ex.complete = True
        if self.closed:
            return
        if ex.handler is not None:
            ex.handler.feed_end()
        if ex.responded:
            self._advance()

    # -- flow control
    def pause(self, reason: int) -> None:
        """Stop reading from the client for ``reason`` (several reasons may hold at once)."""
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        """Drop ``reason``; read again when no reason is left."""
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    # -- answering
    def close(self, linger: bool = True) -> None:
        """Close after what is already written; nothing more is read or written from now on.

        With ``linger`` on plain TCP the write side is shut first and input is drained for a
        moment, so that a client still sending (a body we refused) reads our answer, not a reset.
        """
        if self.closed:
            return
        self.closed = True
        transport = self.transport
        if not linger or self.eof or not half_close(transport):
            transport.close()
            return
        if self.paused:
            transport.resume_reading()
        self.linger = self.loop.call_later(LINGER_S, transport.close)

    def reply(self, ex: Exchange, data: bytes, status: int, close: bool = False) -> None:
        """Send a complete response for ``ex`` (the head of the pipeline)."""
        if status >= 500 and not ex.own:  # counted before the client can see it
            self.server.metrics.inc("http_errors")
        if not self.closed:
            self.transport.write(data)
        self.response_done(ex, status, close)

    def reply_error(
        self, ex: Exchange, status: int, title: str, description: str, close: bool = False
    ) -> None:
        """Answer ``ex`` with a JSON error, or cut the connection if its answer has begun."""
        self._stop(ex)
        if ex.head_sent:
            self.close()
            self.response_done(ex, status, True)
            return
        # a body the client will not send (it waits for 100-continue) cannot be drained
        close = close or self.must_close(ex) or (ex.expect and not ex.complete)
        signer = self.server.error_signer
        nonce = method = target = b""
        if signer is not None:
            nonce = next((v for k, v in ex.headers if k.lower() == b"x-attestation-nonce"), b"")
            # the method is set once the head is parsed; before that the target may be partial,
            # so a request whose head was not parsed is signed over neither
            if ex.method:
                method, target = ex.method, ex.url
        data = error_response(
            status,
            title,
            description,
            close=close,
            signer=signer,
            method=method,
            target=target,
            nonce=nonce,
        )
        self.reply(ex, data, status, close)

    def must_close(self, ex: Exchange) -> bool:
        """Whether the connection ends after the answer to ``ex``."""
        return not ex.keep_alive or ex.upgrade is not None or self.eof or self.server.closing

    def response_done(self, ex: Exchange, status: int, close: bool) -> None:
        """The answer to ``ex`` has been written: account for it and move to the next request."""
        ex.responded = True
        ex.status = status
        ex.handler = None
        if self.paused & (PAUSE_UPSTREAM | PAUSE_BUFFER):
            self.resume(PAUSE_UPSTREAM | PAUSE_BUFFER)
        server = self.server
        if server.debug:
            self._log(ex)
        if close or not ex.keep_alive or ex.upgrade is not None or self.eof or server.closing:
            self.close()
            return
        if not ex.complete:
            ex.discard = True
            ex.body = []
            return
        pipeline = self.pipeline
        if len(pipeline) == 1 and not self.advancing:  # the usual case: nothing queued behind
            pipeline.popleft()
            self.idle_since = self.loop.time()
            if self.paused:
                self.resume(PAUSE_PIPELINE)
            return
        self._advance()

    def start_tunnel(self, up: AppSide, ex: Exchange) -> None:
        """The app accepted the upgrade: from now on bytes flow both ways untouched."""
        self.tunnel = up
        ex.responded = True
        ex.status = 101
        if self.server.debug:
            self._log(ex)
        self.pipeline.clear()
        self.raw = None
        self.resume(PAUSE_BUFFER | PAUSE_PIPELINE)
        # the client stopped sending before the app accepted: tell the app
        if self.eof and not half_close(up.transport):
            up.close()

    # -- limits
    def expire(self, now: float, paused_for: float) -> None:
        """Apply the listener's timeouts; the server's sweep calls this every few moments.

        A request's clock starts when the sweep first sees it (within one sweep of its first
        byte; the accept for a connection's first request) and does not run while we, not the
        client, hold the reading (``paused_for`` is the time since the last sweep).
        """
        limits = self.server.limits
        # Checked even after close(): an answer nobody reads would hold the socket forever.
        if self.write_paused and self._send_stalled(now, limits.send_timeout_s):
            self._cut(f"the client took nothing for {limits.send_timeout_s:g} s")
        elif self.closed:
            return
        elif self.tunnel is not None:
            self._expire_tunnel(paused_for, limits.tunnel_idle_timeout_s)
        elif self.parsing is None or self.parsing.complete:  # no request being received
            self._expire_idle(now, limits)
        else:
            self._expire_request(self.parsing, now, paused_for, limits)

    def _send_stalled(self, now: float, send_timeout_s: float) -> bool:
        """Whether the client has taken nothing of our answer for ``send_timeout_s``.

        The kernel wakes a writer only once a third of a large send buffer is free, so a slow
        but steady reader can keep us paused for seconds: a send queue that shrank since the
        last look is progress too.
        """
        if now - self.write_paused_at <= send_timeout_s:
            return False
        unsent = unsent_bytes(self.fd)
        if unsent is not None and unsent != self.unsent:
            self.unsent, self.write_paused_at = unsent, now
            return False
        return True

    def _expire_tunnel(self, paused_for: float, idle_timeout_s: float) -> None:
        """Close a tunnel (after a 101) through which no byte moved for ``idle_timeout_s``."""
        if self.tunnel_moved != self.tunnel_seen:
            self.tunnel_seen, self.tunnel_quiet = self.tunnel_moved, 0.0
            return
        self.tunnel_quiet += paused_for
        if self.tunnel_quiet > idle_timeout_s:
            self._cut(f"no byte moved for {idle_timeout_s:g} s", "tunnel closed")

    def _expire_idle(self, now: float, limits: LimitsSettings) -> None:
        """Between requests: close silently after the idle (or, before any, the head) timeout."""
        if self.pipeline or self.raw is not None:
            return  # answering: the app's time, not the client's
        # before the first request the head timeout runs from the accept
        limit = limits.header_timeout_s if self.parsing is None else limits.idle_timeout_s
        if now - self.idle_since > limit:
            self.close(linger=False)  # no request to answer: a silent close

    def _expire_request(
        self, ex: Exchange, now: float, paused_for: float, limits: LimitsSettings
    ) -> None:
        """A request being received: 408 when its head or whole body is too slow."""
        if self.paused:
            if ex.since:
                ex.since += paused_for
            return
        if not ex.since:
            ex.since = self.opened if self.idle_since == self.opened else now
            return
        if not ex.method:
            if now - ex.since > limits.header_timeout_s:
                what = f"the request head did not arrive within {limits.header_timeout_s:g} s"
                self._malformed(408, "Request timeout", what)
            return
        if now - ex.since <= limits.request_timeout_s:
            return
        if ex.responded:  # answered early; the rest of its body is too slow to drain
            self.close()
            return
        what = f"the request did not arrive within {limits.request_timeout_s:g} s"
        self._refuse(ex, 408, "Request timeout", what)

    # -- internals
    def _refuse(self, ex: Exchange, status: int, title: str, description: str) -> None:
        """Answer ``ex`` with an error and close: now if it is first in line, else in its turn
        (its body is read and dropped meanwhile)."""
        if ex is self.pipeline[0]:
            self.reply_error(ex, status, title, description, True)
        else:
            ex.error = (status, title, description)
            ex.discard = True

    def _cut(self, why: str, event: str = "slow client cut") -> None:
        """Abort the connection (nothing more can reach the client) and log why, in bursts."""
        count = self.server.cut.hit()
        if count is not None:
            where = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
            logger.bind(client=where, reason=why, connections=count).warning(
                f"{self.server.name}: {event}"
            )
        self.closed = True
        if self.linger is not None:
            self.linger.cancel()
        self.transport.abort()

    def _body(self, ex: Exchange, data: bytes) -> None:
        ex.received += len(data)
        limit = self.server.max_body_bytes
        if ex.discard:
            if ex.received > DISCARD_LIMIT:
                self.close()
            return
        if ex.received > limit and ex.upgrade is None:
            self._refuse(ex, 413, "Payload too large", f"the body exceeds {limit} bytes")
            return
        if ex.handler is not None:
            ex.handler.feed(data)
            return
        ex.body.append(data)
        ex.buffered += len(data)
        if ex.buffered > BUFFER_HIGH:
            self.pause(PAUSE_BUFFER)

    def take_body(self, ex: Exchange) -> list[bytes]:
        """Hand the buffered body of ``ex`` to its new handler."""
        body, ex.body, ex.buffered = ex.body, [], 0
        if self.parsing is ex or self.raw is ex:
            self.resume(PAUSE_BUFFER)
        return body

    def _advance(self) -> None:
        # a loop, not recursion: many pipelined requests may be answered synchronously
        if self.advancing:
            return
        self.advancing = True
        try:
            while self.pipeline and self.pipeline[0].responded and self.pipeline[0].complete:
                self.pipeline.popleft()
                if self.pipeline:
                    if len(self.pipeline) == 1:
                        self.resume(PAUSE_PIPELINE)
                    self.server.dispatch(self, self.pipeline[0])
                else:
                    self.idle_since = self.loop.time()
                    self.resume(PAUSE_PIPELINE)
                    if self.eof:
                        self.close()
        finally:
            self.advancing = False

    def _upgraded(self, rest: bytes) -> None:
        """The parser stopped after an upgrade request; what follows is the new protocol."""
        ex = self.pipeline[-1] if self.pipeline else None
        if ex is None or ex.responded:
            self.close()
            return
        self.raw = ex
        if rest:
            self._body(ex, rest)

    def _malformed(self, status: int, title: str, description: str) -> None:
        if self.closed:
            return
        self.pause(PAUSE_DEAD)
        ex = self.parsing
        if ex is None or ex.responded or ex not in self.pipeline:
            ex = Exchange()
            self.pipeline.append(ex)
        ex.error = (status, title, description)
        ex.keep_alive = False
        ex.complete = True
        self.parsing = None
        if ex is self.pipeline[0]:
            if ex.handler is not None or ex.task is not None or ex.head_sent:
                self.reply_error(ex, status, title, description, True)
            elif not ex.responded:
                self.server.dispatch(self, ex)

    def _stop(self, ex: Exchange) -> None:
        handler, ex.handler = ex.handler, None
        if handler is not None:
            handler.abort()
        if ex.task is not None and not ex.task.done():
            ex.task.cancel()

    def _log(self, ex: Exchange) -> None:
        logger.debug(
            "request",
            method=ex.method.decode("latin-1"),
            path=ex.url.partition(b"?")[0].decode("latin-1"),
            status=ex.status,
            duration_ms=round((self.loop.time() - ex.started) * 1000, 3),
        )

    def info(self) -> dict[str, Any]:
        """The peer and local addresses, for ASGI scopes."""
        sockname = self.transport.get_extra_info("sockname")
        server = None
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            server = (str(sockname[0]), int(sockname[1]))
        return {"client": self.client, "server": server}


def _head_too_large(limit: int) -> tuple[str, str]:
    return "Request header fields too large", f"the request head exceeds {limit} bytes"
