"""The HTTP/1.1 listener every server of the project uses, and the ASGI app served on it.

:class:`HttpListener` accepts connections itself (so one beyond ``max_connections`` is closed
before anything else happens to it, TLS handshakes in progress included), hands each to a
:class:`~enclave_core.http.connection.ClientConnection`, and applies the limits of
:class:`~enclave_core.config.LimitsSettings` from one periodic sweep. Subclasses route requests:
:class:`AsgiListener` serves one ASGI app; the runtime's public listener
(:class:`~enclave_core.http.proxy.ProxyListener`) also proxies to the app.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import ssl
from urllib.parse import unquote_to_bytes

import httptools
from loguru import logger

from enclave_core.config import LimitsSettings
from enclave_core.http.asgi import ASGIApp, OwnRequest, make_scope
from enclave_core.http.connection import ClientConnection
from enclave_core.http.exchange import ErrorSigner, Exchange
from enclave_core.http.tls import TlsTransport, accept_tls
from enclave_core.log import BurstCounter
from enclave_core.metrics import Metrics
from enclave_core.streams import transport

SWEEP_S = 5.0  # at most; shorter when a timeout is short (an eighth of the shortest)
CLOSE_GRACE_S = 5.0
ACCEPT_BATCH = 128  # connections accepted per wake-up at most, like asyncio's own servers
ACCEPT_RETRY_S = 1.0  # out of file descriptors: accept again after this
#: accept() errors that mean "out of resources for now", not "this connection failed"
_ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

__all__ = ["ASGIApp", "AsgiListener", "HttpListener", "raise_file_limit"]


def debug_enabled() -> bool:
    """Whether any loguru sink takes DEBUG records (checked off the hot path, every few seconds)."""
    core = getattr(logger, "_core", None)
    # min_level is infinity while no sink is installed: compare it as it is, never int() it.
    return bool(getattr(core, "min_level", 0) <= 10)


class HttpListener:
    """An HTTP/1.1 listener with the limits of ``limits``; subclasses route the requests.

    Call :meth:`start` and :meth:`close` on the event loop that serves it.
    """

    def __init__(
        self,
        *,
        own_app: ASGIApp,
        metrics: Metrics,
        ssl_context: ssl.SSLContext | None = None,
        limits: LimitsSettings | None = None,
        error_signer: ErrorSigner | None = None,
        name: str,
    ) -> None:
        """:param own_app: the ASGI app this listener answers with itself.
        :param limits: the listener's limits (default: ``runtime.limits``' defaults).
        :param error_signer: signs the errors the listener answers itself.
        :param name: names the listener in log lines.
        """
        self.own_app = own_app
        self.metrics = metrics
        self.ssl_context = ssl_context
        self.name = name
        self.limits = limits = limits or LimitsSettings()
        self.max_body_bytes = limits.max_body_bytes
        self.max_header_bytes = limits.max_header_bytes
        self.own_max_body = limits.max_body_bytes  # what the own app may receive
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
        self.connections: set[ClientConnection] = set()
        self.debug = False
        self.closing = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
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
        sock = address if isinstance(address, socket.socket) else transport.listen_socket(address)
        sock.setblocking(False)
        self._sock = sock
        self.loop.add_reader(sock.fileno(), self._accept)
        self.debug = debug_enabled()
        self._last_sweep = self.loop.time()
        self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)
        where = address if isinstance(address, str) else str(sock.getsockname())
        logger.bind(**self.log_fields()).info(f"{self.name} started", address=where)

    def log_fields(self) -> dict[str, object]:
        """What the start-up log line says of this listener besides its address."""
        return {}

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
                return
            tls = await accept_tls(self.loop, sock, self.ssl_context, self.limits.header_timeout_s)
        except (OSError, TimeoutError):
            sock.close()  # a failed or slow handshake
            return
        TlsTransport(self.loop, tls, ClientConnection(self)).start()

    def _refuse_warning(self) -> None:
        refused = self.refused.hit()
        if refused is not None:
            logger.bind(limit=self.limits.max_connections, refused=refused).warning(
                f"{self.name} refused connections beyond max_connections"
            )

    # -- per request
    def dispatch(self, conn: ClientConnection, ex: Exchange) -> None:
        """Route a request whose head is complete."""
        target = self.request_target(conn, ex)
        if target is not None:
            self.serve_own(conn, ex, target)

    def request_target(self, conn: ClientConnection, ex: Exchange) -> bytes | None:
        """Count the request and give its origin-form target, or answer a malformed one (None)."""
        self.metrics.inc("http_requests")
        if ex.error is not None:
            conn.reply_error(ex, *ex.error, close=True)
            return None
        target = ex.url
        if target[:1] != b"/" and target != b"*":
            try:
                parsed = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                conn.reply_error(ex, 400, "Bad request", "invalid request target", close=True)
                return None
            target = parsed.path or b"/"
            if parsed.query:
                target += b"?" + parsed.query
        return target

    def serve_own(self, conn: ClientConnection, ex: Exchange, target: bytes) -> None:
        """Answer the request with :attr:`own_app`."""
        raw_path, _, query = target.partition(b"?")
        path = decoded_path(raw_path)
        scope = make_scope(conn, ex, path, raw_path, query, self.scheme)
        OwnRequest(conn, ex, self.own_app, scope).start()

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


def decoded_path(raw_path: bytes) -> str:
    """The request path as routes see it: percent-decoded, UTF-8 (invalid bytes replaced)."""
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = unquote_to_bytes(path).decode("utf-8", "replace")
    return path


class AsgiListener(HttpListener):
    """An ASGI app served alone by the project's HTTP/1.1 listener, with its limits.

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
        # the runtime's counters describe the public listener only; these are not read
        super().__init__(
            own_app=app, metrics=Metrics(), ssl_context=ssl_context, limits=limits, name=name
        )


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
