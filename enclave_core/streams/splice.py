"""A listener whose every connection is spliced, byte for byte, to a target address.

The supervisor's ingress forwarders (host TCP → enclave vsock) and the runtime's in-enclave bridges
(loopback TCP → host vsock) are both this. The forwarder never looks at the bytes; half-close and
back-pressure come from :func:`enclave_core.streams.transport.splice`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from loguru import logger

from enclave_core.errors import EnclaveError
from enclave_core.log import BurstCounter
from enclave_core.streams import transport


class TrackedServer:
    """A listener whose connections are tracked, so :meth:`close` can cut every open one.

    Subclasses implement :meth:`serve`; :meth:`admit` may refuse a connection first.
    """

    #: Names the listener in errors and logs ("ingress", "bridge", "egress proxy", ...).
    kind = "listener"

    def __init__(self, listen: str) -> None:
        self.listen = listen
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and listen; EnclaveError naming the address when it cannot."""
        try:
            self._server = await transport.listen(self.listen, self._accept)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise EnclaveError(f"{self.kind} cannot listen on {self.listen}: {why}") from None
        logger.bind(listen=self.bound, **self.log_fields()).info(f"{self.kind} listening")

    def log_fields(self) -> dict[str, str]:
        """Extra fields of the "listening" log line."""
        return {}

    def bound_host_port(self) -> tuple[str, int] | None:
        """The TCP ``(host, port)`` actually bound, or None (not listening, or not TCP)."""
        sockets = getattr(self._server, "sockets", None)
        if not sockets or self.listen.startswith(("vsock://", "unix://")):
            return None
        host, port = sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def bound(self) -> str:
        """The address actually bound (``tcp://HOST:PORT`` after asking for port 0)."""
        bound = self.bound_host_port()
        return self.listen if bound is None else f"tcp://{bound[0]}:{bound[1]}"

    @property
    def active(self) -> int:
        """How many connections are open right now."""
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Whether to serve this connection (a refusal answers and closes it itself)."""
        return True

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection; the writer is the subclass's to close."""
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await self.admit(reader, writer):
            return
        # The work runs in its own task, which close() cancels: cancelling the task asyncio made
        # for this callback would make asyncio (3.11) log the cancellation as an error.
        work = asyncio.create_task(self.serve(reader, writer))
        self._connections.add(work)
        work.add_done_callback(self._connections.discard)
        try:
            await asyncio.wait({work})
        finally:
            if not work.done():
                work.cancel()
            if work.cancelled():
                await close_writer(writer)


class Forwarder(TrackedServer):
    """Forwards every connection accepted on ``listen`` to ``target`` (an address, or a callable
    returning one at connect time, since an enclave's CID may change between restarts).

    With ``max_connections``, a connection beyond that many open ones is closed as soon as it is
    accepted: the forwarder never reads the bytes (they may be TLS), so it cannot answer a 503.
    A side that takes none of what waits for it for ``send_timeout_s`` is cut, with its peer;
    so is a connection one side has ended (EOF) once no byte moved for ``half_closed_idle_s``.
    """

    kind = "forwarder"
    #: What the log line says when the target cannot be reached.
    unreachable = "cannot reach its target"

    def __init__(
        self,
        listen: str,
        target: str | Callable[[], str],
        *,
        connect_timeout_s: float = 5.0,
        max_connections: int | None = None,
        send_timeout_s: float = transport.SEND_TIMEOUT_S,
        half_closed_idle_s: float = transport.HALF_CLOSED_IDLE_S,
    ) -> None:
        super().__init__(listen)
        self._target = target if callable(target) else (lambda: target)
        self.connect_timeout_s = connect_timeout_s
        self.max_connections = max_connections
        self.send_timeout_s = send_timeout_s
        self.half_closed_idle_s = half_closed_idle_s
        self.refused = BurstCounter()  # connections closed beyond max_connections
        self.unreached = BurstCounter()  # connections dropped: the target could not be reached

    @property
    def target(self) -> str:
        """The address connections go to now."""
        return self._target()

    def log_fields(self) -> dict[str, str]:
        """The target, in the "listening" log line."""
        return {"target": self.target}

    async def admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Close the connection at once beyond ``max_connections``."""
        if self.max_connections is None or len(self._connections) < self.max_connections:
            return True
        refused = self.refused.hit()
        if refused is not None:
            logger.bind(listen=self.listen, limit=self.max_connections, refused=refused).warning(
                f"{self.kind} refused connections beyond max_connections"
            )
        await close_writer(writer)
        return False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Connect to the target and splice both ways."""
        target = self.target
        try:
            upstream = await transport.connect(target, timeout=self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            dropped = self.unreached.hit()  # one line while an enclave (re)starts
            if dropped is not None:
                logger.bind(listen=self.listen, target=target, error=why, dropped=dropped).warning(
                    f"{self.kind} {self.unreachable}"
                )
            await close_writer(writer)
            return
        await transport.splice(
            (reader, writer),
            upstream,
            send_timeout_s=self.send_timeout_s,
            half_closed_idle_s=self.half_closed_idle_s,
        )


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream writer, ignoring a peer that is already gone."""
    writer.close()
    with contextlib.suppress(OSError, RuntimeError):
        await writer.wait_closed()
