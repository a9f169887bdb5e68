"""The runtime's public listener: its own routes, and a streaming reverse proxy to the app.

The hot path is asyncio Protocols and httptools, not a framework plus an HTTP client (a framework
sink forwarding through aiohttp reached 0.26x of direct throughput on our benchmark machine; see
docs/benchmarks.md for this design). Requests are parsed by
:class:`~enclave_core.runtime.httpserver.ClientConnection`; :class:`UpstreamPool` hands them to
pooled keep-alive :class:`~enclave_core.runtime.upstream.Upstream` connections; bodies stream both
ways with back-pressure, and an accepted ``Upgrade`` (WebSocket) becomes a byte splice.
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
from enclave_core.runtime.exchange import ErrorSigner, Exchange
from enclave_core.runtime.httpserver import ClientConnection
from enclave_core.runtime.upstream import Upstream

SWEEP_S = 5.0
IDLE_TIMEOUT_S = 60.0  # a client connection with no request in progress is closed after this
CLOSE_GRACE_S = 5.0
CONNECT_TIMEOUT_S = 10.0
MAX_IDLE = 128  # idle upstream connections kept for reuse

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
        error_signer: ErrorSigner | None = None,
    ) -> None:
        self.own_app = own_app
        self.is_own_path = is_own_path
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.metrics = metrics
        self.app_unavailable = app_unavailable
        self.ssl_context = ssl_context
        self.max_body_bytes = max_body_bytes
        # Errors the listener answers itself (502, 503, 413, 400) are signed like the runtime's
        # own endpoints' answers.
        self.error_signer = error_signer
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
        name = self._server.sockets[0].getsockname()
        if not isinstance(name, tuple):
            raise RuntimeError(f"the public listener has no port: it listens on {name}")
        return int(name[1])

    async def close(self) -> None:
        """Stop accepting, close idle connections, give requests in flight a moment, then cut."""
        server, self._server = self._server, None
        if server is None:
            return
        self.closing = True
        server.close()
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
        await server.wait_closed()
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run

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
        parts = [ex.method, b" ", target, b" HTTP/1.1\r\n", *ex.fwd]
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


class UpstreamPool:
    """Keep-alive connections to the app: reuse idle ones, open more as needed, drop broken ones."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.idle: list[Upstream] = []  # a stack: the most recently used is reused first
        self._warned = -1e9

    def forward(self, conn: ClientConnection, ex: Exchange, head: bytes) -> None:
        """Send the request of ``ex`` over an idle connection, or a new one."""
        idle = self.idle
        while idle:
            up = idle.pop()
            if not up.closed:
                up.bind(conn, ex, head, reused=True)
                return
        ex.task = self.loop.create_task(self._open(conn, ex, head, False))

    def retry(self, conn: ClientConnection, ex: Exchange, request: bytes) -> None:
        """Send a fully buffered request again, on a fresh connection."""
        ex.task = self.loop.create_task(self._open(conn, ex, request, True))

    async def _open(self, conn: ClientConnection, ex: Exchange, data: bytes, replay: bool) -> None:
        try:
            _, up = await asyncio.wait_for(
                self.loop.create_connection(lambda: Upstream(self), self.host, self.port),
                CONNECT_TIMEOUT_S,
            )
        except (TimeoutError, OSError) as exc:
            ex.task = None
            if self.loop.time() - self._warned > 10:  # one line per burst, not one per request
                self._warned = self.loop.time()
                logger.warning("app not reachable", port=self.port, error=str(exc))
            if not conn.closed and not ex.responded:
                conn.reply_error(ex, 502, "Bad gateway", "the app is not reachable")
            return
        ex.task = None
        if conn.closed or ex.responded:
            self.release(up)
            return
        up.bind(conn, ex, data, reused=False, replay=replay)

    def release(self, up: Upstream) -> None:
        """Return a healthy connection for reuse."""
        if len(self.idle) < MAX_IDLE:
            self.idle.append(up)
        else:
            up.close()

    def forget(self, up: Upstream) -> None:
        """A connection closed: never hand it out again."""
        try:
            self.idle.remove(up)
        except ValueError:
            pass

    def close(self) -> None:
        """Close every idle connection."""
        for up in self.idle:
            up.close()
        self.idle.clear()
