"""The IMDS forwarder: the enclave's way to the instance role's credentials, IMDSv2 only.

It listens on the host's vsock port ``egress.imds_port`` (loopback TCP in development) and
forwards to the instance metadata service only the token request and the token-carrying GETs
the SDKs need for the role's credentials and the region, one request per connection; tokens are
never logged. Which paths, and what everything else is answered: docs/architecture.md, "The egress
proxy and the IMDS forwarder".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import urllib.parse

from loguru import logger

from enclave_core.streams import transport
from enclave_core.supervisor.httpio import (
    HEAD_TIMEOUT_S,
    ConnectionServer,
    HttpError,
    close_writer,
    read_head,
    render_head,
    respond,
)

IMDS_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
DEFAULT_TARGET = "tcp://169.254.169.254:80"
CONNECT_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 5.0
TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a URL path, not a token
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
_GET_PATHS = re.compile(
    r"^/latest/(?:"
    r"meta-data/iam/security-credentials/(?:(?!\.\.?/?$)[\w+=,.@-]{1,128}/?)?"
    r"|meta-data/placement/(?:availability-zone|region)/?"
    r"|dynamic/instance-identity/document/?"
    r")$"
)
#: Hop-by-hop headers (and Host), replaced rather than forwarded.
_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "host"}
)


def imds_target(listen_port: int) -> str:
    """The forwarder's target: ``$AWS_EC2_METADATA_SERVICE_ENDPOINT`` or 169.254.169.254:80.

    An endpoint that is the forwarder's own loopback port would loop forever: it is ignored.
    """
    endpoint = os.environ.get(IMDS_ENDPOINT_ENV)
    if not endpoint:
        return DEFAULT_TARGET
    parts = urllib.parse.urlsplit(endpoint)
    try:
        port = parts.port or 80
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port < 0:
        logger.bind(endpoint=endpoint).warning(f"{IMDS_ENDPOINT_ENV} is not http://HOST[:PORT]")
        return DEFAULT_TARGET
    if port == listen_port and _is_local(parts.hostname):
        logger.bind(endpoint=endpoint).warning(f"{IMDS_ENDPOINT_ENV} points at the forwarder")
        return DEFAULT_TARGET
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"tcp://{host}:{port}"


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_request(method: str, target: str, token: str | None, ttl: str | None) -> None:
    """Raise HttpError unless the request may reach IMDS (the rules of the module docstring)."""
    if method == "PUT":
        if target != TOKEN_PATH:
            raise HttpError(403, "only /latest/api/token may be PUT")
        if not ttl:
            raise HttpError(400, f"{TTL_HEADER} is required")
        return
    if method != "GET":
        raise HttpError(405, "only GET and PUT are forwarded")
    if not _GET_PATHS.match(target):
        raise HttpError(403, "this metadata path is not forwarded")
    if not token:
        raise HttpError(401, f"IMDSv2 only: {TOKEN_HEADER} is required")


class ImdsForwarder(ConnectionServer):
    """Forwards the allowed IMDSv2 requests to ``target``, one per connection."""

    kind = "IMDS forwarder"

    def __init__(
        self,
        listen: str,
        target: str = DEFAULT_TARGET,
        *,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
    ) -> None:
        """:param target: ``tcp://HOST:PORT`` of IMDS (tests use a fake)."""
        super().__init__(listen)
        self.target = target
        self._host_header = target.removeprefix("tcp://")
        self.head_timeout_s = head_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.answer_timeout_s = answer_timeout_s

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Check one request, forward it and relay the answer."""
        try:
            head = await read_head(reader, timeout_s=self.head_timeout_s)
            method, target, _version = head.request_line()
            if head.header("Transfer-Encoding") or (head.header("Content-Length") or "0") != "0":
                raise HttpError(400, "IMDS requests carry no body")
            check_request(method, target, head.header(TOKEN_HEADER), head.header(TTL_HEADER))
        except EOFError:
            await close_writer(writer)
            return
        except HttpError as exc:
            logger.bind(status=exc.status, reason=exc.reason).warning("imds refused")
            await respond(reader, writer, exc.status, exc.reason)
            return
        try:
            upstream = await transport.connect(self.target, timeout=self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            logger.bind(target=self.target, error=why).warning("imds unreachable")
            await respond(reader, writer, 502, f"instance metadata service unreachable: {why}")
            return
        headers = [(k, v) for k, v in head.headers if k.lower() not in _HOP]
        forwarded = render_head(
            f"{method} {target} HTTP/1.1",
            [("Host", self._host_header), *headers, ("Connection", "close")],
        )
        try:
            status = await self._relay(forwarded, upstream, reader, writer)
        finally:
            await close_writer(upstream[1])
            await close_writer(writer)
        logger.bind(method=method, path=target, status=status).info("imds request")

    async def _relay(
        self,
        request: bytes,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> int:
        """Send the request, pass the answer back with ``Connection: close``; its status or 502."""
        up_reader, up_writer = upstream
        try:
            up_writer.write(request)
            await up_writer.drain()
            answer = await read_head(up_reader, timeout_s=self.answer_timeout_s)
            status_text = answer.first_line.split(" ", 2)[1:2]
            status = int(status_text[0]) if status_text and status_text[0].isdigit() else 0
            if not answer.first_line.startswith("HTTP/1.") or not 100 <= status < 600:
                raise HttpError(502, "malformed answer")
        except (OSError, EOFError, HttpError) as exc:
            why = exc.reason if isinstance(exc, HttpError) else type(exc).__name__
            logger.bind(target=self.target, error=why).warning("imds answer failed")
            await respond(reader, writer, 502, "no valid answer from the instance metadata service")
            return 502
        headers = [(k, v) for k, v in answer.headers if k.lower() not in _HOP]
        writer.write(render_head(answer.first_line, [*headers, ("Connection", "close")]))
        with contextlib.suppress(OSError):
            await writer.drain()
        # The body, until IMDS closes (it was asked to); answers are small, so bound the wait.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(transport.pump(up_reader, writer), self.answer_timeout_s)
        return status
