"""The egress proxy: HTTP CONNECT to the ``egress.allow`` entries only, everything else 403.

The enclave reaches AWS through ``HTTPS_PROXY``, an in-enclave bridge to this proxy on the host's
vsock port ``egress.port`` (loopback TCP in development, with the same policy). The host is
resolved at every CONNECT and every address is tried; refusals are logged. Matching rules and
error answers: docs/architecture.md, "The egress proxy and the IMDS forwarder".
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from dataclasses import dataclass

from loguru import logger

from enclave_core.config import Config
from enclave_core.errors import ConfigError
from enclave_core.plugin.interfaces import Launcher
from enclave_core.streams import transport
from enclave_core.supervisor.httpio import (
    HEAD_TIMEOUT_S,
    MAX_CONNECTIONS,
    ConnectionServer,
    HttpError,
    close_writer,
    read_head,
    respond,
)
from enclave_core.supervisor.imds import ImdsForwarder, imds_target

CONNECT_TIMEOUT_S = 10.0
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


@dataclass(frozen=True)
class Destination:
    """A ``host:port`` a client asked for, host lower-cased, without brackets or a final dot."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """Parse ``host:port`` or ``[v6]:port``; ValueError naming what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("expected host:port with a port in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            return Destination(str(ipaddress.IPv6Address(host[1:-1])), int(port_text))
        except ValueError:
            raise ValueError("invalid IPv6 address") from None
    host = host.lower().removesuffix(".")
    if not _HOSTNAME.match(host):
        raise ValueError("invalid host name")
    return Destination(host, int(port_text))


class EgressPolicy:
    """The allow-list: exact ``host:port`` entries and ``*.domain:port`` wildcards."""

    def __init__(self, entries: list[str], region: str) -> None:
        """:raises ConfigError: an entry is not ``host:port`` (after ``{region}`` expansion)."""
        self.exact: set[Destination] = set()
        self.wildcards: set[Destination] = set()  # host holds the domain the "*." stands for
        for index, entry in enumerate(entries):
            expanded = entry.replace("{region}", region)
            wildcard = expanded.startswith("*.")
            try:
                destination = parse_destination(expanded[2:] if wildcard else expanded)
            except ValueError as exc:
                raise ConfigError(f"egress.allow.{index}: {entry!r}: {exc}.") from None
            (self.wildcards if wildcard else self.exact).add(destination)

    @classmethod
    def from_config(cls, config: Config) -> EgressPolicy:
        """The policy of ``config.egress.allow`` for ``config.region``."""
        return cls(config.egress.allow, config.region)

    def allows(self, destination: Destination) -> bool:
        """Whether a CONNECT to ``destination`` may pass."""
        if destination in self.exact:
            return True
        return any(
            destination.port == entry.port and destination.host.endswith("." + entry.host)
            for entry in self.wildcards
        )


class EgressProxy(ConnectionServer):
    """The HTTP CONNECT proxy enforcing an :class:`EgressPolicy`."""

    kind = "egress proxy"

    def __init__(
        self,
        listen: str,
        policy: EgressPolicy,
        *,
        max_tunnels: int = MAX_CONNECTIONS,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        """:param listen: ``vsock://4294967295:PORT`` on a Nitro host, else loopback TCP."""
        super().__init__(listen, max_connections=max_tunnels)
        self.policy = policy
        self.head_timeout_s = head_timeout_s
        self.connect_timeout_s = connect_timeout_s

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read the CONNECT, check the policy, connect, answer 200 and splice."""
        try:
            head = await read_head(reader, timeout_s=self.head_timeout_s)
            method, target, _version = head.request_line()
        except EOFError:  # connected and closed without a word
            await close_writer(writer)
            return
        except HttpError as exc:
            logger.bind(status=exc.status, reason=exc.reason).warning("egress bad request")
            await respond(reader, writer, exc.status, exc.reason)
            return
        if method != "CONNECT":
            logger.bind(method=method, status=405).warning("egress refused a non-CONNECT request")
            await respond(reader, writer, 405, "only CONNECT is served", [("Allow", "CONNECT")])
            return
        try:
            destination = parse_destination(target)
        except ValueError as exc:
            logger.bind(status=400, reason=str(exc)).warning("egress bad request")
            await respond(reader, writer, 400, f"invalid CONNECT target: {exc}")
            return
        if not self.policy.allows(destination):
            logger.warning(
                "egress refused", host=destination.host, port=destination.port, reason="not allowed"
            )
            await respond(reader, writer, 403, f"egress to {destination} is not in egress.allow")
            return
        await self._tunnel(destination, reader, writer)

    async def _tunnel(
        self, destination: Destination, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        started = time.monotonic()
        try:
            # open_connection resolves now and tries every address: nothing is pinned.
            upstream = await asyncio.wait_for(
                asyncio.open_connection(destination.host, destination.port),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            logger.bind(host=destination.host, port=destination.port, error=why).warning(
                "egress upstream unreachable"
            )
            await respond(reader, writer, 502, f"cannot reach {destination}: {why}")
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        up, down = await transport.splice((reader, writer), upstream)
        logger.bind(
            host=destination.host,
            port=destination.port,
            bytes_up=up,
            bytes_down=down,
            duration_ms=round((time.monotonic() - started) * 1000),
        ).info("egress tunnel closed")


def host_uses_vsock(launcher: Launcher) -> bool:
    """Whether the launcher reaches the enclave over vsock (a real Nitro host)."""
    return transport.parse_address(launcher.enclave_address(1)).scheme == "vsock"


def host_listen_address(port: int, *, vsock: bool) -> str:
    """Where a host service listens: vsock on every CID on a Nitro host, else loopback TCP."""
    return f"vsock://{transport.VSOCK_ANY_CID}:{port}" if vsock else f"tcp://127.0.0.1:{port}"


async def start_host_services(config: Config, *, vsock: bool) -> list[ConnectionServer]:
    """Start the egress proxy on ``egress.port`` and the IMDS forwarder on ``egress.imds_port``.

    :raises ConfigError: ``egress.allow`` has an invalid entry.
    :raises EnclaveError: a port cannot be bound (nothing is left listening then).
    """
    services: list[ConnectionServer] = [
        EgressProxy(
            host_listen_address(config.egress.port, vsock=vsock), EgressPolicy.from_config(config)
        ),
        ImdsForwarder(
            host_listen_address(config.egress.imds_port, vsock=vsock),
            imds_target(config.egress.imds_port),
        ),
    ]
    started: list[ConnectionServer] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
    except BaseException:
        await stop_host_services(started)
        raise
    return started


async def stop_host_services(services: list[ConnectionServer]) -> None:
    """Close the services :func:`start_host_services` started, cutting their connections."""
    for service in services:
        await service.close()
