"""Ingress forwarders: a host TCP listener whose connections are spliced to an enclave port.

One forwarder per ``supervisor.ingress`` entry. Each accepted connection opens its own connection
to the enclave address (``vsock://CID:PORT`` on a Nitro host, loopback TCP in development) and
the bytes are pumped both ways, half-close included, by :func:`enclave_core.transport.splice`.
The forwarder never looks at the bytes: TLS is terminated inside the enclave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from loguru import logger

from enclave_core import transport
from enclave_core.errors import EnclaveError


class IngressForwarder:
    """Forwards every connection accepted on ``listen`` to ``target()``."""

    def __init__(
        self, listen: str, target: Callable[[], str], *, connect_timeout_s: float = 5.0
    ) -> None:
        """:param target: returns the enclave address at connect time (the CID may change)."""
        self.listen = listen
        self._target = target
        self._connect_timeout_s = connect_timeout_s
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and listen; EnclaveError naming the address when it cannot."""
        try:
            self._server = await transport.listen(self.listen, self._handle)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise EnclaveError(f"ingress cannot listen on {self.listen}: {why}") from None
        logger.info("ingress listening", listen=self.bound, target=self._target())

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
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            target = self._target()
            try:
                upstream = await transport.connect(target, timeout=self._connect_timeout_s)
            except (TimeoutError, OSError) as exc:
                why = str(exc) or "timed out"
                logger.bind(listen=self.listen, target=target, error=why).warning(
                    "ingress cannot reach the enclave"
                )
                writer.close()
                try:
                    await writer.wait_closed()
                except OSError:
                    pass
                return
            await transport.splice((reader, writer), upstream)
        finally:
            self._connections.discard(task)
