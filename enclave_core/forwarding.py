"""A listener whose every connection is spliced, byte for byte, to a target address.

The supervisor's ingress forwarders (host TCP → enclave vsock) and the runtime's in-enclave bridges
(loopback TCP → host vsock) are both this. The forwarder never looks at the bytes; half-close and
back-pressure come from :func:`enclave_core.transport.splice`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from loguru import logger

from enclave_core import transport
from enclave_core.errors import EnclaveError


class Forwarder:
    """Forwards every connection accepted on ``listen`` to ``target`` (an address, or a callable
    returning one at connect time, since an enclave's CID may change between restarts)."""

    #: Names the forwarder in errors and logs ("ingress", "bridge").
    kind = "forwarder"
    #: What the log line says when the target cannot be reached.
    unreachable = "cannot reach its target"

    def __init__(
        self, listen: str, target: str | Callable[[], str], *, connect_timeout_s: float = 5.0
    ) -> None:
        self.listen = listen
        self._target = target if callable(target) else (lambda: target)
        self.connect_timeout_s = connect_timeout_s
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def target(self) -> str:
        """The address connections go to now."""
        return self._target()

    async def start(self) -> None:
        """Bind and listen; EnclaveError naming the address when it cannot."""
        try:
            self._server = await transport.listen(self.listen, self._handle)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise EnclaveError(f"{self.kind} cannot listen on {self.listen}: {why}") from None
        logger.bind(listen=self.bound, target=self.target).info(f"{self.kind} listening")

    @property
    def bound(self) -> str:
        """The ``HOST:PORT`` actually bound (useful when ``listen`` asked for port 0)."""
        sockets = getattr(self._server, "sockets", None)
        if not sockets:
            return self.listen
        host, port = sockets[0].getsockname()[:2]
        return f"{host}:{port}"

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The work runs in its own task, which close() cancels: cancelling the task asyncio made
        # for this callback would make asyncio (3.11) log the cancellation as an error.
        work = asyncio.create_task(self._forward(reader, writer))
        self._connections.add(work)
        work.add_done_callback(self._connections.discard)
        try:
            await asyncio.wait({work})
        finally:
            if not work.done():
                work.cancel()
            if work.cancelled():
                await _close(writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self.target
        try:
            upstream = await transport.connect(target, timeout=self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            logger.bind(listen=self.listen, target=target, error=why).warning(
                f"{self.kind} {self.unreachable}"
            )
            await _close(writer)
            return
        await transport.splice((reader, writer), upstream)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
