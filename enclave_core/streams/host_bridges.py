"""In-enclave bridges to the host's egress proxy and IMDS forwarder, and the variables for them.

An enclave has no network interface: its only way out is vsock to the parent instance (CID 3).
Inside a Nitro Enclave the runtime therefore listens on loopback TCP ``127.0.0.1:{egress.port}``
and ``127.0.0.1:{egress.imds_port}`` and splices every connection to ``vsock://3:{same port}``,
where the supervisor's egress proxy and IMDS forwarder listen. The runtime then sets, for itself
and the app (:func:`proxy_environment`):

- ``HTTPS_PROXY``/``https_proxy`` = ``http://127.0.0.1:{egress.port}``: boto3 and ordinary HTTP
  clients tunnel HTTPS through the allow-list with CONNECT;
- ``NO_PROXY``/``no_proxy`` = ``127.0.0.1,localhost,::1``: the app API and the app stay direct;
- ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` = ``http://127.0.0.1:{egress.imds_port}``: the SDKs
  fetch the instance role's credentials through the IMDS forwarder.

In development there are no bridges: the supervisor's proxy and forwarder listen on those loopback
ports themselves, and the same variables point at them, so the allow-list is exercised there too.
It covers only non-loopback destinations (``NO_PROXY``; the tests' moto server is on loopback),
and only HTTPS: plain HTTP has no route out of an enclave, and no ``HTTP_PROXY`` is set.

:func:`in_enclave` decides: ``/dev/nsm`` exists (the Nitro Secure Module is only there inside an
enclave) or ``attestation.backend`` is ``nitro``. The fake nitro-cli of the tests runs the runtime
with simulated attestation, as an ordinary process: no bridges there.
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
