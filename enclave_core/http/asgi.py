"""Serve a listener's own routes with a real ASGI 3 app.

The app runs as soon as the request head is in and ``receive`` hands it the body as it arrives,
so a route can refuse a request without waiting for the body. At most the listener's
``own_max_body`` is accepted, and the answer is gathered and sent with a Content-Length: these
routes answer bounded documents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from enclave_core.http.exchange import PAUSE_BUFFER, REASONS

if TYPE_CHECKING:
    from enclave_core.http.connection import ClientConnection
    from enclave_core.http.exchange import Exchange

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
_SKIP = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})
UNREAD_HIGH = 256 * 1024  # pause reading the client beyond this much body the app has not read


class OwnRequest:
    """One request to an own ASGI app; the body handler of its exchange."""

    __slots__ = (
        "conn", "ex", "app", "scope", "body", "unread", "size", "ended", "delivered", "gone",
        "waiter", "continued", "asked",
    )  # fmt: skip

    def __init__(self, conn: ClientConnection, ex: Exchange, app: ASGIApp, scope: dict) -> None:
        self.conn = conn
        self.ex = ex
        self.app = app
        self.scope = scope
        self.body: list[bytes] = []  # received, not yet handed to the app
        self.unread = 0
        self.size = 0
        self.ended = False  # the whole body has been received
        self.delivered = False  # the app has had the end of the body
        self.gone = False  # the client went away, or the exchange was answered otherwise
        self.waiter: asyncio.Future[None] | None = None
        self.continued = False  # 100 Continue sent
        self.asked = False  # the app has called receive before

    def start(self) -> None:
        """Take over the exchange: check the declared size, then run the app."""
        conn, ex = self.conn, self.ex
        ex.own = True
        if (ex.content_length or 0) > conn.server.own_max_body:
            conn.reply_error(ex, 413, "Payload too large", self._too_large(), close=True)
            return
        ex.handler = self
        for piece in conn.take_body(ex):
            self.feed(piece)
        if ex.handler is not self:
            return
        if ex.complete:
            self.ended = True
        ex.task = conn.loop.create_task(self._run())

    def feed(self, data: bytes) -> None:
        """Take a piece of the body; beyond the listener's limit answer 413."""
        self.size += len(data)
        if self.size > self.conn.server.own_max_body:
            self.conn.reply_error(self.ex, 413, "Payload too large", self._too_large(), close=True)
            return
        self.body.append(data)
        self.unread += len(data)
        if self.unread > UNREAD_HIGH:
            self.conn.pause(PAUSE_BUFFER)
        self._wake()

    def _too_large(self) -> str:
        return f"the body exceeds {self.conn.server.own_max_body} bytes"

    def feed_end(self) -> None:
        """The body is complete."""
        self.ended = True
        self._wake()

    def abort(self) -> None:
        """The client went away or the exchange was answered otherwise."""
        self.gone = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self.waiter = self.conn.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``: the body as it arrives, then (only) a disconnect."""
        while True:
            if self.gone:
                return {"type": "http.disconnect"}
            if self.body or (self.ended and not self.delivered):
                self.asked = True
                data = b"".join(self.body)
                self.body.clear()
                if self.unread > UNREAD_HIGH:
                    self.conn.resume(PAUSE_BUFFER)
                self.unread = 0
                self.delivered = self.ended
                return {"type": "http.request", "body": data, "more_body": not self.ended}
            if not self.asked:  # let the app start (and perhaps answer) without the body
                self.asked = True
                return {"type": "http.request", "body": b"", "more_body": True}
            if not self.delivered and self.ex.expect and not self.continued:
                self.continued = True  # the app wants the body: tell the client to send it
                if not self.conn.closed:
                    self.conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self._wait()

    async def _run(self) -> None:
        conn, ex = self.conn, self.ex
        start: dict[str, Any] | None = None
        parts: list[bytes] = []
        finished = False

        async def send(message: dict[str, Any]) -> None:
            nonlocal start, finished
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body" and start is not None and not finished:
                parts.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    finished = True
                    self._respond(start, parts)

        try:
            await self.app(self.scope, self.receive, send)
        except Exception:
            logger.opt(exception=True).error("runtime route failed", path=self.scope["path"])
        finally:
            self.abort()
            ex.task = None
        if finished or ex.responded:
            return
        if start is not None:
            self._respond(start, parts)
        else:
            ex.own = False  # a failure of the runtime, not a status it reports
            conn.reply_error(ex, 500, "Internal error", "the runtime could not answer this request")

    def _respond(self, start: dict[str, Any], parts: list[bytes]) -> None:
        conn, ex = self.conn, self.ex
        status = int(start["status"])
        body = b"".join(parts)
        # a client waiting for 100 Continue never sends the body the connection still expects
        close = conn.must_close(ex) or (ex.expect and not ex.complete and not self.continued)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))]
        for name, value in start.get("headers", ()):
            if bytes(name).lower() not in _SKIP:
                head.extend((bytes(name), b": ", bytes(value), b"\r\n"))
        head.append(b"Content-Length: %d\r\n" % len(body))
        if close:
            head.append(b"Connection: close\r\n")
        elif ex.version == "1.0":
            head.append(b"Connection: keep-alive\r\n")
        head.append(b"\r\n")
        if ex.method != b"HEAD" and status not in (204, 304):
            head.append(body)
        ex.head_sent = True
        conn.reply(ex, b"".join(head), status, close)


def make_scope(
    conn: ClientConnection, ex: Exchange, path: str, raw_path: bytes, query: bytes, scheme: str
) -> dict[str, Any]:
    """The ASGI 3 HTTP scope of ``ex``."""
    info = conn.info()
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": ex.version,
        "method": ex.method.decode("latin-1"),
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in ex.headers],
        "client": info["client"],
        "server": info["server"],
        "extensions": {},
    }
