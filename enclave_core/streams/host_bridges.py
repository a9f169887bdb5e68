"""In-enclave bridges to the host's egress proxy and IMDS forwarder, and the variables for them.

An enclave's only way out is vsock to the parent (CID 3). Inside a Nitro Enclave
(:func:`in_enclave`) the runtime splices loopback ``127.0.0.1:{egress.port}`` and
``{egress.imds_port}`` to the same vsock ports on the host, and :func:`proxy_environment` gives
the runtime and the app ``HTTPS_PROXY``, ``NO_PROXY`` and ``AWS_EC2_METADATA_SERVICE_ENDPOINT``.
In development the supervisor listens on those loopback ports itself (docs/architecture.md,
"How they talk").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from enclave_core.config import Config
from enclave_core.streams import transport
from enclave_core.streams.splice import Forwarder

NSM_DEVICE = Path("/dev/nsm")
IMDS_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
NO_PROXY = "127.0.0.1,localhost,::1"
CONNECT_TIMEOUT_S = 5.0


def in_enclave(config: Config, *, nsm_device: Path = NSM_DEVICE) -> bool:
    """Whether this runtime runs inside a Nitro Enclave (and so must bridge over vsock)."""
    return nsm_device.exists() or config.attestation.backend == "nitro"


def proxy_environment(config: Config) -> dict[str, str]:
    """The variables that send HTTPS and IMDS traffic through the host's policy."""
    proxy = f"http://127.0.0.1:{config.egress.port}"
    return {
        "HTTPS_PROXY": proxy,
        "https_proxy": proxy,
        "NO_PROXY": NO_PROXY,
        "no_proxy": NO_PROXY,
        IMDS_ENDPOINT_ENV: f"http://127.0.0.1:{config.egress.imds_port}",
    }


def parent_address(port: int) -> str:
    """The host's vsock address for ``port`` (the default bridge target)."""
    return f"vsock://{transport.VSOCK_PARENT_CID}:{port}"


class Bridge(Forwarder):
    """Listens on loopback TCP and splices every connection to ``target`` (vsock to the host)."""

    kind = "bridge"
    unreachable = "cannot reach the host"

    def __init__(self, listen: str, target: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S):
        """:param listen: ``tcp://127.0.0.1:PORT``; :param target: ``vsock://3:PORT`` (or tcp)."""
        super().__init__(listen, target, connect_timeout_s=connect_timeout_s)


async def start_bridges(
    config: Config, *, target: Callable[[int], str] = parent_address
) -> list[Bridge]:
    """Start the egress and IMDS bridges; EnclaveError (none left listening) if one cannot bind.

    :param target: maps a port to the host's address (tests pass loopback TCP).
    """
    bridges: list[Bridge] = []
    try:
        for port in (config.egress.port, config.egress.imds_port):
            bridge = Bridge(f"tcp://127.0.0.1:{port}", target(port))
            await bridge.start()
            bridges.append(bridge)
    except BaseException:
        await stop_bridges(bridges)
        raise
    return bridges


async def stop_bridges(bridges: list[Bridge]) -> None:
    """Close every bridge."""
    for bridge in bridges:
        await bridge.close()
