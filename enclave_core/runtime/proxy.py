"""The runtime's public listener: its own routes, and a streaming reverse proxy to the app.

The hot path is asyncio Protocols and httptools, not a framework plus an HTTP client: a framework
sink forwarding through aiohttp reached 0.26x of direct throughput on our benchmark machine, this
design 0.75x or more (see docs/benchmarks.md). Requests are parsed by
:class:`~enclave_core.runtime.httpserver.ClientConnection`; bodies stream both ways through pooled
keep-alive upstream connections (:class:`Upstream`) with back-pressure; an accepted ``Upgrade``
(WebSocket) becomes a byte splice.
The event loop is the caller's choice: the runtime and the benchmark pick uvloop.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import httptools
from loguru import logger

from enclave_core import transport
from enclave_core.metrics import Metrics
from enclave_core.runtime.asgi_bridge import ASGIApp, OwnRequest, make_scope
from enclave_core.runtime.httpserver import ClientConnection, Exchange
from enclave_core.runtime.upstream import UpstreamPool

SWEEP_S = 5.0
IDLE_TIMEOUT_S = 60.0  # a client connection with no request in progress is closed after this
CLOSE_GRACE_S = 5.0
_REQ_DROP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    }
)  # fmt: skip

__all__ = ["ASGIApp", "PublicServer"]


def debug_enabled() -> bool:
    """Whether any loguru sink takes DEBUG records (checked off the hot path, every few seconds)."""
    core = getattr(logger, "_core", None)
    return int(getattr(core, "min_level", 0)) <= 10


class PublicServer:
    """The runtime's public listener: serves the runtime's own routes, proxies the rest to
    the app.

    Call :meth:`start` and :meth:`close` on the event loop that serves it.
    """

    def __init__(
        self,
        *,
        own_app: ASGIApp,
        is_own_path: Callable[[str], bool],
        upstream_host: str,
        upstream_port: int,
        metrics: Metrics,
        app_unavailable: Callable[[], str | None] = lambda: None,
        ssl_context: ssl.SSLContext | None = None,
        max_body_bytes: int | None = None,
    ) -> None:
        self.own_app = own_app
        self.is_own_path = is_own_path
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.metrics = metrics
        self.app_unavailable = app_unavailable
        self.ssl_context = ssl_context
        self.max_body_bytes = max_body_bytes
        self.scheme = "https" if ssl_context is not None else "http"
        self.proto_line = b"X-Forwarded-Proto: " + self.scheme.encode() + b"\r\n"
        self.connections: set[ClientConnection] = set()
        self.debug = False
        self.closing = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.pool: UpstreamPool = None  # type: ignore[assignment]
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, address: str) -> None:
        """Listen on ``address`` (``tcp://HOST:PORT``, ``vsock://CID:PORT`` or ``unix:///path``)."""
        self.loop = asyncio.get_running_loop()
        self.pool = UpstreamPool(self.loop, self.upstream_host, self.upstream_port)
        sock = transport.listen_socket(address)
        try:
            self._server = await self.loop.create_server(
                lambda: ClientConnection(self), sock=sock, ssl=self.ssl_context
            )
        except BaseException:
            sock.close()
            raise
        self.debug = debug_enabled()
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)
        logger.info("public listener started", address=address, upstream_port=self.upstream_port)

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the public listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop accepting, close idle connections, give requests in flight a moment, then cut."""
        if self._server is None:
            return
        self.closing = True
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if not conn.pipeline or conn.tunnel is not None:
                conn.close(linger=False)
        deadline = self.loop.time() + CLOSE_GRACE_S
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.transport.abort()
        self.pool.close()
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run
        self._server = None

    # -- per request
    def dispatch(self, conn: ClientConnection, ex: Exchange) -> None:
        """Route a request: malformed, the runtime's own route, unavailable app, or the app."""
        self.metrics.inc("http_requests")
        if ex.error is not None:
            conn.reply_error(ex, *ex.error, close=True)
            return
        target = ex.url
        if target[:1] != b"/" and target != b"*":
            try:
                parsed = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                conn.reply_error(ex, 400, "Bad request", "invalid request target", close=True)
                return
            target = parsed.path or b"/"
            if parsed.query:
                target += b"?" + parsed.query
        raw_path, _, query = target.partition(b"?")
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote_to_bytes(path).decode("utf-8", "replace")
        if self.is_own_path(path):
            scope = make_scope(conn, ex, path, raw_path, query, self.scheme)
            OwnRequest(conn, ex, self.own_app, scope).start()
            return
        if ex.method == b"CONNECT":
            conn.reply_error(ex, 405, "Method not allowed", "CONNECT is not proxied", close=True)
            return
        reason = self.app_unavailable()
        if reason is not None:
            conn.reply_error(ex, 503, "Service unavailable", reason)
            return
        limit = self.max_body_bytes
        if limit is not None and (ex.content_length or 0) > limit:
            description = f"the body exceeds {limit} bytes"
            conn.reply_error(ex, 413, "Payload too large", description, close=True)
            return
        self.pool.forward(conn, ex, self._request_head(conn, ex, target))

    def _request_head(self, conn: ClientConnection, ex: Exchange, target: bytes) -> bytes:
        parts = [ex.method, b" ", target, b" HTTP/1.1\r\n"]
        hop = ex.hop
        for name, value in ex.headers:
            lname = name.lower()
            if lname in _REQ_DROP or (hop is not None and lname in hop):
                continue
            parts += (name, b": ", value, b"\r\n")
        xff = conn.client_ip if ex.xff is None else ex.xff + b", " + conn.client_ip
        parts += (b"X-Forwarded-For: ", xff, b"\r\n", self.proto_line)
        if ex.host is not None:
            parts += (b"X-Forwarded-Host: ", ex.host, b"\r\n")
        if ex.upgrade is not None:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", ex.upgrade, b"\r\n")
        if ex.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _sweep(self) -> None:
        """Every few seconds: refresh the log level check, close long-idle client connections."""
        self.debug = debug_enabled()
        cutoff = self.loop.time() - IDLE_TIMEOUT_S
        for conn in list(self.connections):
            if not conn.pipeline and conn.tunnel is None and conn.idle_since < cutoff:
                conn.close(linger=False)
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)
