"""The runtime's public listener: its own routes, and a streaming reverse proxy to the app.

The hot path is asyncio Protocols and httptools, not a framework plus an HTTP client (a framework
sink forwarding through aiohttp reached 0.26x of direct throughput on our benchmark machine; see
docs/benchmarks.md for this design). Requests are parsed by
:class:`~enclave_core.http.connection.ClientConnection`; :class:`UpstreamPool` hands them to
pooled keep-alive :class:`~enclave_core.http.upstream.Upstream` connections; bodies stream both
ways with back-pressure, and an accepted ``Upgrade`` (WebSocket) becomes a byte splice.
The event loop is the caller's choice: the runtime and the benchmark pick uvloop.

The same server, without an upstream, serves the runtime's app API and control listener and the
supervisor's management API (:class:`AsgiListener`): one HTTP/1.1 implementation, so the limits of
:class:`~enclave_core.config.LimitsSettings` (head and body size, slow-client timeouts, connections
per listener) are implemented and tested once for every listener.

Connections are accepted by the server itself rather than by ``loop.create_server``, so that one
beyond ``max_connections`` is closed before anything else happens to it (no TLS handshake, no
read), and so that TLS handshakes in progress count as connections: a client opening connections
and never finishing their handshake cannot slip past the limit.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import ssl
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import httptools
from loguru import logger

from enclave_core.config import LimitsSettings
from enclave_core.http.asgi import ASGIApp, OwnRequest, make_scope
from enclave_core.http.connection import ClientConnection
from enclave_core.http.exchange import ErrorSigner, Exchange
from enclave_core.http.upstream import Upstream
from enclave_core.log import BurstCounter
from enclave_core.metrics import Metrics
from enclave_core.streams import transport

SWEEP_S = 5.0  # at most; shorter when a timeout is short (an eighth of the shortest)
CLOSE_GRACE_S = 5.0
CONNECT_TIMEOUT_S = 10.0
MAX_IDLE = 128  # idle upstream connections kept for reuse
ACCEPT_BATCH = 128  # connections accepted per wake-up at most, like asyncio's own servers
ACCEPT_RETRY_S = 1.0  # out of file descriptors: accept again after this
#: The runtime's own routes on the public listener (health, enclave-info, attestation) take no
#: body; what they get is buffered, so it is bounded below the proxied bodies' limit.
OWN_ROUTES_MAX_BODY = 1 << 20
#: accept() errors that mean "out of resources for now", not "this connection failed"
_ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

__all__ = ["ASGIApp", "AsgiListener", "ProxyListener"]


def debug_enabled() -> bool:
    """Whether any loguru sink takes DEBUG records (checked off the hot path, every few seconds)."""
    core = getattr(logger, "_core", None)
    # min_level is infinity while no sink is installed: compare it as it is, never int() it.
    return bool(getattr(core, "min_level", 0) <= 10)


class ProxyListener:
    """The runtime's public listener: serves the runtime's own routes, proxies the rest to
    the app. Without an upstream (:class:`AsgiListener`) it serves its own app alone.

    Call :meth:`start` and :meth:`close` on the event loop that serves it.
    """

    def __init__(
        self,
        *,
        own_app: ASGIApp,
        is_own_path: Callable[[str], bool],
        upstream_host: str | None,
        upstream_port: int | None,
        metrics: Metrics,
        app_unavailable: Callable[[], str | None] = lambda: None,
        ssl_context: ssl.SSLContext | None = None,
        limits: LimitsSettings | None = None,
        error_signer: ErrorSigner | None = None,
        name: str = "public listener",
    ) -> None:
        """:param upstream_port: the app; None sends every request to ``own_app``.
        :param limits: the listener's limits (default: ``runtime.limits``' defaults).
        :param name: names the listener in log lines.
        """
        self.own_app = own_app
        self.is_own_path = is_own_path
        self.upstream_host = upstream_host or "127.0.0.1"
        self.upstream_port = upstream_port
        self.metrics = metrics
        self.app_unavailable = app_unavailable
        self.ssl_context = ssl_context
        self.name = name
        self.limits = limits = limits or LimitsSettings()
        self.max_body_bytes = limits.max_body_bytes
        self.max_header_bytes = limits.max_header_bytes
        # what the own app may receive: everything, or (beside a proxied app) small bodies only
        self.own_max_body = limits.max_body_bytes
        if upstream_port is not None:
            self.own_max_body = min(limits.max_body_bytes, OWN_ROUTES_MAX_BODY)
        shortest = min(
            limits.header_timeout_s,
            limits.request_timeout_s,
            limits.idle_timeout_s,
            limits.send_timeout_s,
            limits.tunnel_idle_timeout_s,
        )
        self.sweep_s = min(SWEEP_S, max(0.05, shortest / 8))
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
        self._sock: socket.socket | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._last_sweep = 0.0
        # accepted connections not yet served: plain ones for a loop turn, TLS ones until their
        # handshake ends; they count towards max_connections
        self._adopting: set[asyncio.Task[None]] = set()
        self.refused = BurstCounter()  # connections closed at accept, beyond max_connections
        self.cut = BurstCounter()  # connections cut by send_timeout_s or tunnel_idle_timeout_s

    async def start(self, address: str | socket.socket) -> None:
        """Listen on ``address`` (``tcp://HOST:PORT``, ``vsock://CID:PORT`` or ``unix:///path``),
        or on a listening socket bound already."""
        self.loop = asyncio.get_running_loop()
        if self.upstream_port is not None:
            self.pool = UpstreamPool(self.loop, self.upstream_host, self.upstream_port)
        sock = address if isinstance(address, socket.socket) else transport.listen_socket(address)
        sock.setblocking(False)
        self._sock = sock
        self.loop.add_reader(sock.fileno(), self._accept)
        self.debug = debug_enabled()
        self._last_sweep = self.loop.time()
        self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)
        where = address if isinstance(address, str) else str(sock.getsockname())
        logger.info(f"{self.name} started", address=where, upstream_port=self.upstream_port)

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        if self._sock is None:
            raise RuntimeError(f"the {self.name} is not started")
        name = self._sock.getsockname()
        if not isinstance(name, tuple):
            raise RuntimeError(f"the {self.name} has no port: it listens on {name}")
        return int(name[1])

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Stop accepting, close idle connections, give requests in flight ``grace_s``, then cut."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self.closing = True
        self.loop.remove_reader(sock.fileno())
        sock.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._adopting):
            task.cancel()
        for conn in list(self.connections):
            if not conn.pipeline or conn.tunnel is not None:
                conn.close(linger=False)
        # Wait only for requests in flight: an idle TLS connection, asked to close, would hold
        # the whole grace period waiting for a close_notify answer its idle client never sends.
        deadline = self.loop.time() + grace_s
        while self.loop.time() < deadline and any(
            conn.pipeline and conn.tunnel is None for conn in self.connections
        ):
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.transport.abort()
        if self.pool is not None:
            self.pool.close()
        if self._adopting:
            await asyncio.gather(*self._adopting, return_exceptions=True)
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run

    # -- accepting
    def _accept(self) -> None:
        """The listening socket is readable: accept what is waiting, refuse beyond the limit."""
        listener = self._sock
        for _ in range(ACCEPT_BATCH):
            if listener is None or self._sock is None:
                return
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                # Out of file descriptors or memory (or worse): try again in a moment, not spin.
                level = "WARNING" if exc.errno in _ACCEPT_EXHAUSTED else "ERROR"
                logger.bind(error=exc.strerror or str(exc)).log(
                    level, f"{self.name} cannot accept for now"
                )
                self.loop.remove_reader(listener.fileno())
                self.loop.call_later(ACCEPT_RETRY_S, self._resume_accepting)
                return
            if len(self.connections) + len(self._adopting) >= self.limits.max_connections:
                sock.close()  # the cheapest refusal: nothing read, no handshake, no answer
                self._refuse_warning()
                continue
            task = self.loop.create_task(self._adopt(sock))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    def _resume_accepting(self) -> None:
        if self._sock is not None and not self.closing:
            self.loop.add_reader(self._sock.fileno(), self._accept)

    async def _adopt(self, sock: socket.socket) -> None:
        """Serve an accepted connection (after its TLS handshake, bounded by the head timeout)."""
        sock.setblocking(False)
        try:
            if self.ssl_context is None:
                await self.loop.connect_accepted_socket(lambda: ClientConnection(self), sock)
            else:
                await self.loop.connect_accepted_socket(
                    lambda: ClientConnection(self),
                    sock,
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=self.limits.header_timeout_s,
                )
        except (OSError, TimeoutError, ssl.SSLError):
            pass  # a failed or slow handshake: the transport has closed the socket

    def _refuse_warning(self) -> None:
        refused = self.refused.hit()
        if refused is not None:
            logger.bind(limit=self.limits.max_connections, refused=refused).warning(
                f"{self.name} refused connections beyond max_connections"
            )

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

    def _sweep(self) -> None:
        """Every few moments: refresh the log level check, apply every connection's timeouts.

        One timer for the listener instead of one per request keeps the hot path free of timer
        work; a deadline is met within one sweep (an eighth of the shortest timeout) or two.
        """
        self.debug = debug_enabled()
        now = self.loop.time()
        elapsed, self._last_sweep = now - self._last_sweep, now
        for conn in list(self.connections):
            conn.expire(now, elapsed)
        self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)


def _everything(path: str) -> bool:
    return True


class AsgiListener(ProxyListener):
    """An ASGI app served alone by the public listener's HTTP/1.1 server, with its limits.

    The runtime's app API and control listener and the supervisor's management API are Falcon
    apps served this way rather than by uvicorn, so that every listener has the same limits,
    answers (JSON ``{"title","description"}`` errors) and tests. The app gets each request's body
    as it arrives (at most ``limits.max_body_bytes``; see :mod:`enclave_core.http.asgi`),
    and its answer is sent with a Content-Length: these APIs return bounded documents (a stored
    object is at most 10 MiB), not streams.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        name: str,
        limits: LimitsSettings | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            own_app=app,
            is_own_path=_everything,
            upstream_host=None,
            upstream_port=None,
            # the runtime's counters describe the public listener only; these are not read
            metrics=Metrics(),
            ssl_context=ssl_context,
            limits=limits,
            name=name,
        )


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


def raise_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the new limit.

    Every connection is a file descriptor (two for a proxied or forwarded one), and a common soft
    limit of 1024 is below what ``max_connections`` on several listeners allows: without this,
    accepting would fail with EMFILE first. Go's runtime does the same at start.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.bind(soft=soft, hard=hard, error=str(exc)).warning(
                "cannot raise the open-file limit"
            )
            return soft
        return target
    return soft
