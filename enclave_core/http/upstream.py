"""A keep-alive connection from the public listener to the app, relaying one response at a time.

:class:`Upstream` is an asyncio Protocol with an ``httptools.HttpResponseParser``: it sends a
request (head and body as the body arrives), rewrites the response head (hop-by-hop headers out,
framing chosen for the client), streams the body to the client with back-pressure both ways, and
after an accepted ``Upgrade`` splices raw bytes. The pool that reuses these lives in
:mod:`enclave_core.http.proxy`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple, Protocol

import httptools

from enclave_core.http.exchange import PAUSE_UPSTREAM, REASONS, Exchange, half_close

if TYPE_CHECKING:
    from enclave_core.http.connection import ClientConnection


class Pool(Protocol):
    """What an :class:`Upstream` needs of the pool that owns it (the proxy's ``UpstreamPool``)."""

    def release(self, up: Upstream) -> None:
        """Take back a healthy connection for reuse."""

    def forget(self, up: Upstream) -> None:
        """The connection closed: never hand it out again."""

    def retry(self, conn: ClientConnection, ex: Exchange, request: bytes) -> None:
        """Send a fully buffered request again, on a fresh connection."""


_RESP_DROP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade",
    }
)  # fmt: skip
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in REASONS.items()}


class ResponseHead(NamedTuple):
    """The response head as the client gets it, and how its body is framed."""

    data: bytes
    chunk_out: bool  # the body goes to the client in chunks
    until_close: bool  # the body ends when the app closes its connection
    close: bool  # the client connection closes after this response
    hold: bool  # a sized body: write the head together with the first body bytes


def rewrite_response_head(
    status: int,
    headers: list[tuple[bytes, bytes]],
    *,
    version: str,
    head_request: bool,
    close: bool,
) -> ResponseHead:
    """The app's response head rewritten for the client: hop-by-hop headers out, framing chosen.

    :param headers: the app's headers as received.
    :param version: the client's HTTP version: only "1.1" gets chunked framing, and "1.0" is
        told of keep-alive explicitly.
    :param head_request: the request was HEAD (no body follows whatever the headers say).
    :param close: the client connection must close after this answer (unless it switches
        protocols with a 101).
    """
    parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
    chunked = length = False
    for name, value in headers:
        lname = name.lower()
        if lname in _RESP_DROP:
            if lname == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lname == b"upgrade" and status == 101:
                parts += (b"Connection: Upgrade\r\nUpgrade: ", value, b"\r\n")
            continue
        if lname == b"content-length":
            length = True
        parts += (name, b": ", value, b"\r\n")
    close = close and status != 101
    bodyless = status == 101 or status == 204 or status == 304 or head_request
    chunk_out = until_close = False
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
        chunk_out = not bodyless
    elif not length and not bodyless:
        until_close = True
        if version == "1.1":
            parts.append(b"Transfer-Encoding: chunked\r\n")
            chunk_out = True
        else:
            close = True
    if close:
        parts.append(b"Connection: close\r\n")
    elif version == "1.0":
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    hold = length and not chunked and not bodyless
    return ResponseHead(b"".join(parts), chunk_out, until_close, close, hold)


class Upstream(asyncio.Protocol):
    """One connection to the app; relays one response at a time to the bound client connection."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.conn: ClientConnection | None = None
        self.ex: Exchange | None = None
        self.out: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.in_head = False
        self.status = 0
        self.replay: bytes | None = None  # the whole request, while a retry is allowed
        self.reused = self.got = self.sent = self.chunk_req = self.chunk_out = False
        self.until_close = self.interim = self.switching = self.spliced = self.done = False
        self.keep = True
        self.client_close = self.reset = self.closed = self.read_paused = self.peer_eof = False
        self.hold = False  # the head waits for the first body bytes, to leave in one write
        self.head_pending = False  # the final response head is in ``out``, not yet written

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = transport  # type: ignore[assignment]

    def bind(
        self, conn: ClientConnection, ex: Exchange, head: bytes, reused: bool, replay: bool = False
    ) -> None:
        """Start forwarding ``ex``: send its head and whatever body has arrived."""
        self.conn, self.ex = conn, ex
        conn.bound = self
        ex.handler = self
        self.reused, self.got, self.done, self.until_close = reused, False, False, False
        self.in_head = True
        self.chunk_out = self.client_close = False
        self.chunk_req = ex.chunked and not replay
        pieces = [head]
        if ex.body and not replay:
            for piece in conn.take_body(ex):
                if self.chunk_req:
                    pieces += (b"%x\r\n" % len(piece), piece, b"\r\n")
                else:
                    pieces.append(piece)
        no_body = ex.upgrade is None and not ex.chunked and not ex.content_length
        self.sent = replay or no_body or ex.complete
        if ex.complete and self.chunk_req:
            pieces.append(b"0\r\n\r\n")
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.replay = data if reused and self.sent else None
        self.transport.write(data)
        if conn.write_paused:
            self.pause_reading()

    # -- request body, from the client connection
    def feed(self, data: bytes) -> None:
        """Forward a piece of the request body."""
        if self.chunk_req:
            self.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.transport.write(data)

    def feed_end(self) -> None:
        """The request body is complete."""
        if not self.sent:
            self.sent = True
            if self.chunk_req:
                self.transport.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """The exchange ended otherwise: this connection is mid-message, so close it."""
        self._unbind()
        self.close()

    def _unbind(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.bound = None
            if conn.paused & PAUSE_UPSTREAM:
                conn.resume(PAUSE_UPSTREAM)
        self.conn = self.ex = None

    def close(self) -> None:
        """Close the connection."""
        if not self.closed:
            self.closed = True
            self.transport.close()

    # -- flow control driven by the client side
    def pause_reading(self) -> None:
        """Stop reading the app's answer while the client is behind."""
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read the app's answer again."""
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        """The app reads the request body slower than the client sends it."""
        if self.conn is not None:
            self.conn.pause(PAUSE_UPSTREAM)

    def resume_writing(self) -> None:
        """The app caught up with the request body."""
        if self.conn is not None:
            self.conn.resume(PAUSE_UPSTREAM)

    # -- the app's answer
    def data_received(self, data: bytes) -> None:
        """Parse the answer and relay it in as few writes as possible."""
        conn = self.conn
        if self.spliced:
            conn.tunnel_moved += 1  # type: ignore[union-attr]
            conn.transport.write(data)  # type: ignore[union-attr]
            return
        if conn is None:
            self.close()  # unsolicited bytes on an idle connection
            return
        self.got = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.switching and len(data) > exc.args[0]:
                self.out.append(data[exc.args[0] :])
        except httptools.HttpParserError:
            self._broken()
            return
        out = self.out
        if out and not self.hold:
            if not conn.closed:
                conn.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            if self.head_pending:
                self.head_pending = False
                self.ex.head_sent = True  # type: ignore[union-attr]
        if self.switching:
            self._splice()
        elif self.done:
            self._finish()

    def eof_received(self) -> bool:
        """After a 101 pass the half-close on; otherwise close (ending a close-delimited body)."""
        self.peer_eof = True
        conn = self.conn
        if self.spliced and conn is not None and not conn.closed and not conn.eof:
            return half_close(conn.transport)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Settle the exchange: retry, 502, end of a close-delimited body, or cut the client."""
        self.closed = True
        self.pool.forget(self)
        self.parser = None  # type: ignore[assignment]  # it calls back into this object: no cycle
        conn, ex = self.conn, self.ex
        if conn is None or ex is None:
            if conn is not None:  # a splice ended
                conn.close()
            return
        self._unbind()
        self.hold = self.head_pending = False
        if conn.closed:
            return
        if not ex.head_sent:
            self.out.clear()
            ex.handler = None
            if self.reused and not self.got and self.replay is not None:
                self.pool.retry(conn, ex, self.replay)
            else:
                conn.reply_error(ex, 502, "Bad gateway", "the app is not reachable")
        elif self.until_close:
            if self.chunk_out:
                conn.transport.write(b"0\r\n\r\n")
            conn.response_done(ex, self.status, self.client_close)
        else:  # cut mid-answer: the client must not mistake it for a complete one
            conn.close()
            conn.response_done(ex, self.status, True)

    def on_header(self, name: bytes, value: bytes) -> None:
        """A response header (trailers are dropped)."""
        if self.in_head:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Rewrite the head for the client: hop-by-hop headers out, framing chosen here."""
        self.in_head = False
        conn, ex = self.conn, self.ex
        assert conn is not None and ex is not None
        status = self.parser.get_status_code()
        if status < 200 and status != 101:  # 100 Continue, 103 Early Hints: relay, keep waiting
            self.interim = True
            if ex.version == "1.1":
                self.out.append(b"HTTP/1.1 %d %s\r\n\r\n" % (status, REASONS.get(status, b"")))
            self.headers = []
            self.in_head = True  # the final head follows
            return
        if status == 101 and ex.upgrade is None:
            raise ValueError("101 without an upgrade request")
        self.status = status
        if status >= 500:  # counted before the client can see it
            conn.server.metrics.inc("http_errors")
        self.keep = self.parser.should_keep_alive()
        headers, self.headers = self.headers, []
        head = rewrite_response_head(
            status,
            headers,
            version=ex.version,
            head_request=ex.method == b"HEAD",
            close=not ex.keep_alive or ex.upgrade is not None or conn.eof or conn.server.closing,
        )
        self.out.append(head.data)
        self.chunk_out, self.until_close = head.chunk_out, head.until_close
        self.client_close = head.close
        self.head_pending = True
        self.hold = head.hold
        if status == 101:
            self.switching = True
        elif ex.method == b"HEAD":
            self.done = self.reset = True  # the parser would wait for a body that never comes

    def on_body(self, data: bytes) -> None:
        """A piece of the response body, re-chunked when the client needs chunks."""
        self.hold = False
        if self.chunk_out:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def on_message_complete(self) -> None:
        """The response (or an interim one) ended."""
        if self.interim:
            self.interim = False
            return
        if self.chunk_out:
            self.out.append(b"0\r\n\r\n")
        self.done = True
        self.hold = False

    def _finish(self) -> None:
        conn, ex = self.conn, self.ex
        assert conn is not None and ex is not None
        conn.bound = self.conn = self.ex = None
        if conn.paused & PAUSE_UPSTREAM:
            conn.resume(PAUSE_UPSTREAM)
        self.done = False
        if self.reset:
            self.reset = False
            self.parser = httptools.HttpResponseParser(self)
        self.replay = None
        reusable = self.keep and self.sent and not self.until_close and ex.upgrade is None
        if reusable and not self.closed:
            if self.read_paused:
                self.resume_reading()
            self.pool.release(self)
        else:
            self.close()
        conn.response_done(ex, self.status, self.client_close)

    def _splice(self) -> None:
        conn, ex = self.conn, self.ex
        assert conn is not None and ex is not None
        self.switching = False
        self.spliced = True
        self.ex = None
        conn.bound = None
        conn.start_tunnel(self, ex)

    def _broken(self) -> None:
        """The app sent something that is not HTTP."""
        conn, ex = self.conn, self.ex
        assert conn is not None and ex is not None
        if self.out and ex.head_sent and not conn.closed:
            conn.transport.write(b"".join(self.out))
        self.out.clear()
        self.hold = self.head_pending = False
        self.abort()
        conn.reply_error(ex, 502, "Bad gateway", "the app sent an invalid HTTP response")
