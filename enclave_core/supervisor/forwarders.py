"""Ingress forwarders: a host TCP listener whose connections are spliced to an enclave port.

One forwarder per ``supervisor.ingress`` entry. Each accepted connection opens its own connection
to the enclave address (``vsock://CID:PORT`` on a Nitro host, loopback TCP in development) and
the bytes are pumped both ways, half-close included, by
:func:`enclave_core.streams.transport.splice`. The forwarder never looks at the bytes: TLS is
terminated inside the enclave.
"""

from __future__ import annotations

from enclave_core.streams.splice import Forwarder


class IngressForwarder(Forwarder):
    """Forwards every connection accepted on ``listen`` to the enclave address ``target()``."""

    kind = "ingress"
    unreachable = "cannot reach the enclave"

    @property
    def bound(self) -> str:
        """The ``HOST:PORT`` actually bound (useful when ``listen`` asked for port 0)."""
        bound = self.bound_host_port()
        return self.listen if bound is None else f"{bound[0]}:{bound[1]}"
