"""Serve the runtime's own routes (health, enclave-info, attestation) with a real ASGI 3 app.

The listener collects the request body (at most its ``own_max_body``: 1 MiB beside a proxied app,
``limits.max_body_bytes`` for an :class:`~enclave_core.runtime.proxy.AsgiServer`), calls the app
with an HTTP scope, gathers its response and sends it with a Content-Length. These routes answer
bounded documents, so buffering the response keeps the framing simple at little cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from enclave_core.runtime.exchange import REASONS

if TYPE_CHECKING:
    from enclave_core.runtime.exchange import Exchange
    from enclave_core.runtime.httpserver import ClientConnection

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
_SKIP = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})


class OwnRequest:
    """One request to the runtime's own ASGI app; the body handler of its exchange."""

    __slots__ = ("conn", "ex", "app", "scope", "body", "size", "gone")

    def __init__(self, conn: ClientConnection, ex: Exchange, app: ASGIApp, scope: dict) -> None:
        self.conn = conn
        self.ex = ex
        self.app = app
        self.scope = scope
        self.body: list[bytes] = []
        self.size = 0
        self.gone: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Take over the exchange: check the declared size, then collect the body."""
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
            self.feed_end()
        elif ex.expect:
            conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def feed(self, data: bytes) -> None:
        """Collect a piece of the body; beyond the listener's limit answer 413."""
        self.size += len(data)
        if self.size > self.conn.server.own_max_body:
            self.conn.reply_error(self.ex, 413, "Payload too large", self._too_large(), close=True)
            return
        self.body.append(data)

    def _too_large(self) -> str:
        return f"the body exceeds {self.conn.server.own_max_body} bytes"

    def feed_end(self) -> None:
        """The body is complete: run the app."""
        if self.ex.task is None:
            self.ex.task = self.conn.loop.create_task(self._run())

    def abort(self) -> None:
        """The client went away or the exchange was answered otherwise."""
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)

    async def _run(self) -> None:
        conn, ex = self.conn, self.ex
        sent_body = False
        start: dict[str, Any] | None = None
        parts: list[bytes] = []
        finished = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": b"".join(self.body), "more_body": False}
            if self.gone is None:
                self.gone = conn.loop.create_future()
            await self.gone
            return {"type": "http.disconnect"}

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
            await self.app(self.scope, receive, send)
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
        close = conn.must_close(ex)
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
