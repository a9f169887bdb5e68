"""One HTTP exchange of the public listener: the request's state and the framing helpers.

An :class:`Exchange` is created per request by
:class:`~enclave_core.http.connection.ClientConnection`. Its body goes to a :class:`Handler`
(the upstream connection or the runtime's own ASGI app) as it arrives.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol

REASONS = {status.value: status.phrase.encode("latin-1") for status in HTTPStatus}
# not forwarded: hop-by-hop, or replaced by the proxy's own
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    }
)  # fmt: skip
_SPECIAL = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# pause_reading reasons
PAUSE_PIPELINE, PAUSE_BUFFER, PAUSE_UPSTREAM, PAUSE_DEAD = 1, 2, 4, 8


class Handler(Protocol):
    """Receives a request body as it arrives: the upstream connection or the own-app bridge."""

    def feed(self, data: bytes) -> None:
        """Take one piece of the request body."""

    def feed_end(self) -> None:
        """The request body is complete."""

    def abort(self) -> None:
        """Stop: the exchange was answered otherwise or the client went away."""


#: Signs a response the listener writes itself:
#: ``(method, target, status, body, nonce) -> extra header lines``.
ErrorSigner = Callable[[bytes, bytes, int, bytes, bytes], bytes]


def error_response(
    status: int,
    title: str,
    description: str,
    *,
    close: bool,
    signer: ErrorSigner | None = None,
    method: bytes = b"",
    target: bytes = b"",
    nonce: bytes = b"",
) -> bytes:
    """A complete JSON error response ``{"title","description"}`` with Content-Length.

    With a ``signer`` the response carries the runtime's attestation signature headers too,
    bound to the request's ``method`` and ``target`` (empty when its request line was not parsed).
    """
    body = json.dumps({"title": title, "description": description}).encode()
    extra = signer(method, target, status, body, nonce) if signer is not None else b""
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n" % (
        status,
        REASONS.get(status, b"Error"),
        len(body),
        extra,
        b"Connection: close\r\n" if close else b"",
    )
    return head + body


def half_close(transport: asyncio.Transport) -> bool:
    """Shut the write side of ``transport``; False when that is not possible (close it then)."""
    if transport.is_closing() or not transport.can_write_eof():
        return False
    try:
        transport.write_eof()
    except (OSError, RuntimeError):  # the peer is already gone
        return False
    return True


class Exchange:
    """One request and the state of its answer."""

    # class-level defaults: a request only pays for the attributes it changes
    url = b""
    method = b""
    version = "1.1"
    keep_alive = True
    content_length: int | None = None
    chunked = False
    host: bytes | None = None
    expect = False
    upgrade: bytes | None = None  # the Upgrade header when Connection asks to upgrade
    xff: bytes | None = None
    hop: set[bytes] | None = None  # extra hop-by-hop names listed in Connection
    buffered = 0
    received = 0
    complete = False  # the whole request message has been read
    handler: Handler | None = None
    task: asyncio.Task[None] | None = None
    discard = False  # answered early: drop the rest of the body
    head_sent = False
    responded = False
    status = 0
    error: tuple[int, str, str] | None = None
    started = 0.0
    since = 0.0  # when the listener's sweep first saw it being received (its timeouts' start)
    own = False  # answered by the runtime's own routes (their 503 is a status, not an error)

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.fwd: list[bytes] = []  # the headers forwarded unchanged, as name, ": ", value, CRLF
        self.body: list[bytes] = []  # body received before a handler takes it

    def head_size(self) -> int:
        """The bytes of the request line and header fields parsed so far (line ends included)."""
        size = len(self.method) + len(self.url) + 12  # spaces, "HTTP/1.1" and CRLF
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        return size

    def classify(self) -> None:
        """Read the headers that matter to framing; collect the ones forwarded as they are."""
        connection: list[bytes] = []
        fwd: list[bytes] = []
        for name, value in self.headers:
            lname = name.lower()
            if lname in _SPECIAL:
                if lname == b"host":
                    self.host = value
                elif lname == b"content-length":
                    self.content_length = int(value)
                elif lname == b"transfer-encoding":
                    self.chunked = b"chunked" in value.lower()
                elif lname == b"connection":
                    connection.extend(t.strip() for t in value.lower().split(b","))
                elif lname == b"upgrade":
                    self.upgrade = value
                elif lname == b"expect":
                    self.expect = value.lower() == b"100-continue"
                elif lname == b"x-forwarded-for":
                    self.xff = value if self.xff is None else self.xff + b", " + value
                if lname in HOP_BY_HOP:
                    continue
            fwd += (name, b": ", value, b"\r\n")
        self.fwd = fwd
        if connection:
            if b"upgrade" not in connection:
                self.upgrade = None
            extra = set(connection) - {b"close", b"keep-alive", b"upgrade", b""}
            if extra:  # more hop-by-hop headers, named by Connection
                self.hop = extra
                self.fwd = [
                    piece
                    for name, value in self.headers
                    if name.lower() not in HOP_BY_HOP and name.lower() not in extra
                    for piece in (name, b": ", value, b"\r\n")
                ]
        elif self.upgrade is not None:
            self.upgrade = None
