"""The supervisor's view of the runtime: its control ``/health`` and its public enclave-info.

Requests go through :mod:`enclave_core.streams.transport` (vsock on a Nitro host, loopback TCP in
development). :func:`public_tls_context` deliberately does not verify the public listener's
certificate: the supervisor only reads public information (docs/architecture.md, "The
supervisor's reads of the runtime").
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from enclave_core.config import Config
from enclave_core.errors import EnclaveError
from enclave_core.plugin.interfaces import Launcher
from enclave_core.streams.transport import connect_sync

MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class Probe:
    """One answer of the runtime's control ``/health``.

    :ivar ok: the runtime answered 200 ``ready``.
    :ivar status: ``ready``, ``initializing``, ``degraded``, ``unreachable`` or ``invalid``.
    :ivar detail: the boot stage, the runtime's error, or why it could not be reached.
    """

    ok: bool
    status: str
    detail: str = ""

    def describe(self) -> str:
        """``status`` plus detail, for log lines and reasons."""
        return f"{self.status}: {self.detail}" if self.detail else self.status

    def as_json(self) -> dict[str, Any]:
        """The probe as shown in the supervisor's ``/health`` (``runtime`` field)."""
        return {"status": self.status, "detail": self.detail}


class RuntimeUnavailable(EnclaveError):
    """The runtime did not answer (not started, booting, or gone)."""

    http_status = 503
    title = "Runtime unavailable"


def public_tls_context() -> ssl.SSLContext:
    """The client context for the runtime's public listener: TLS 1.2+, no certificate check.

    See the module docstring for why the supervisor does not verify the certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class RuntimeClient:
    """Small blocking HTTP client for the runtime's listeners (call it from a worker thread)."""

    def __init__(
        self,
        launcher: Launcher,
        config: Config,
        *,
        timeout_s: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._launcher = launcher
        self._config = config
        self._timeout_s = timeout_s
        self._ssl = ssl_context

    @property
    def public_scheme(self) -> str:
        """``https`` when the public listener is read over TLS, else ``http``."""
        return "https" if self._ssl is not None else "http"

    def public_address(self) -> str:
        """The transport address of the runtime's public listener."""
        return self._launcher.enclave_address(self._config.runtime.port)

    def control_address(self) -> str:
        """The transport address of the runtime's control listener (never forwarded by ingress)."""
        return self._launcher.enclave_address(self._config.runtime.control_port)

    def health(self) -> Probe:
        """Probe the control listener's ``/health``; never raises."""
        try:
            status, body = http_get(self.control_address(), "/health", self._timeout_s)
        except (OSError, http.client.HTTPException) as exc:
            return Probe(False, "unreachable", _why(exc))
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return Probe(False, "invalid", f"HTTP {status} with a body that is not a JSON object")
        state = str(doc.get("status", ""))
        if status == 200 and state == "ready":
            return Probe(True, "ready")
        if state == "initializing":
            return Probe(False, "initializing", str(doc.get("stage", "")))
        if state == "degraded":
            return Probe(False, "degraded", str(doc.get("error", "")))
        return Probe(False, "invalid", f"HTTP {status} status {state!r}")

    def enclave_info(self) -> dict[str, Any]:
        """The runtime's public ``/v1/enclave-info``; RuntimeUnavailable when it cannot answer."""
        address = self.public_address()
        try:
            status, body = http_get(address, "/v1/enclave-info", self._timeout_s, self._ssl)
        except (OSError, http.client.HTTPException) as exc:
            raise RuntimeUnavailable(
                f"runtime enclave-info at {address} is not reachable: {_why(exc)}"
            ) from None
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if status != 200 or not isinstance(doc, dict):
            raise RuntimeUnavailable(f"runtime enclave-info at {address} answered HTTP {status}")
        return doc


def http_get(
    address: str, path: str, timeout_s: float, ssl_context: ssl.SSLContext | None = None
) -> tuple[int, bytes]:
    """GET ``path`` from a transport address; return the status and (bounded) body."""
    sock = connect_sync(address, timeout=timeout_s)
    try:
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname="enclave")
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: enclave\r\nAccept: application/json\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
        )
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            body = response.read(MAX_BODY)
        finally:
            response.close()
        return response.status, body
    finally:
        sock.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
