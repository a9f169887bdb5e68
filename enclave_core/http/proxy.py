"""The runtime's public listener: its own routes, and a streaming reverse proxy to the app.

The hot path is asyncio Protocols and httptools, not a framework plus an HTTP client (see
docs/benchmarks.md): :class:`ProxyListener` routes each request parsed by
:class:`~enclave_core.http.connection.ClientConnection`; :class:`UpstreamPool` hands it to a pooled
keep-alive :class:`~enclave_core.http.upstream.Upstream`; bodies stream both ways with
back-pressure, and an accepted ``Upgrade`` (WebSocket) becomes a byte splice.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from loguru import logger

from enclave_core.config import LimitsSettings
from enclave_core.http.asgi import ASGIApp
from enclave_core.http.connection import ClientConnection
from enclave_core.http.exchange import ErrorSigner, Exchange
from enclave_core.http.listener import CLOSE_GRACE_S, HttpListener, decoded_path
from enclave_core.http.upstream import Upstream
from enclave_core.log import BurstCounter
from enclave_core.metrics import Metrics

CONNECT_TIMEOUT_S = 10.0
MAX_IDLE = 128  # idle upstream connections kept for reuse
#: The runtime's own routes on the public listener (health, enclave-info, attestation) take no
#: body; what they get is buffered, so it is bounded below the proxied bodies' limit.
OWN_ROUTES_MAX_BODY = 1 << 20

__all__ = ["ProxyListener", "UpstreamPool"]


class ProxyListener(HttpListener):
    """The runtime's public listener: serves the runtime's own routes, proxies the rest to the app.

    Call :meth:`start` and :meth:`close` on the event loop that serves it.
    """

    def __init__(
        self,
        *,
        own_app: ASGIApp,
        is_own_path: Callable[[str], bool],
        upstream_host: str | None,
        upstream_port: int,
        metrics: Metrics,
        app_unavailable: Callable[[], str | None] = lambda: None,
        ssl_context: ssl.SSLContext | None = None,
        limits: LimitsSettings | None = None,
        error_signer: ErrorSigner | None = None,
        name: str = "public listener",
    ) -> None:
        """:param is_own_path: whether a (decoded) path is one of the runtime's own routes.
        :param upstream_port: the app's port (on ``upstream_host``, default loopback).
        :param app_unavailable: why the app cannot take requests now (answered 503), or None.
        """
        super().__init__(
            own_app=own_app,
            metrics=metrics,
            ssl_context=ssl_context,
            limits=limits,
            error_signer=error_signer,
            name=name,
        )
        self.is_own_path = is_own_path
        self.upstream_host = upstream_host or "127.0.0.1"
        self.upstream_port = upstream_port
        self.app_unavailable = app_unavailable
        self.own_max_body = min(self.limits.max_body_bytes, OWN_ROUTES_MAX_BODY)
        self.proto_line = b"X-Forwarded-Proto: " + self.scheme.encode() + b"\r\n"
        self.pool: UpstreamPool = None  # type: ignore[assignment]

    async def start(self, address: str | socket.socket) -> None:
        """Open the upstream pool, then listen (see :meth:`HttpListener.start`)."""
        self.pool = UpstreamPool(asyncio.get_running_loop(), self.upstream_host, self.upstream_port)
        await super().start(address)

    def log_fields(self) -> dict[str, object]:
        """The start-up log line names the app's port."""
        return {"upstream_port": self.upstream_port}

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Close as :meth:`HttpListener.close` does, then the idle upstream connections."""
        await super().close(grace_s)
        if self.pool is not None:
            self.pool.close()

    def dispatch(self, conn: ClientConnection, ex: Exchange) -> None:
        """Route a request: malformed, the runtime's own route, unavailable app, or the app."""
        target = self.request_target(conn, ex)
        if target is None:
            return
        if self.is_own_path(decoded_path(target.partition(b"?")[0])):
            self.serve_own(conn, ex, target)
            return
        if ex.method == b"CONNECT":
            conn.reply_error(ex, 405, "Method not allowed", "CONNECT is not proxied", close=True)
            return
        reason = self.app_unavailable()
        if reason is not None:
            conn.reply_error(ex, 503, "Service unavailable", reason)
            return
        limit = self.max_body_bytes
        if (ex.content_length or 0) > limit:
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


class UpstreamPool:
    """Keep-alive connections to the app: reuse idle ones, open more as needed, drop broken ones."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.idle: list[Upstream] = []  # a stack: the most recently used is reused first
        self.unreachable = BurstCounter()  # requests answered 502: the app did not accept

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
            failed = self.unreachable.hit()
            if failed is not None:
                logger.warning("app not reachable", port=self.port, error=str(exc), failed=failed)
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
