#!/usr/bin/env python3
"""Hello, Simple Enclave: an HTTP app on the standard library, run inside the enclave.

It greets, counts its visits in the enclave's encrypted storage (through the app API, with the
framework's client :mod:`enclave_core.appclient`) and says whether its static secret reached it,
never showing the secret itself.

Routes: ``GET /`` (text), ``GET /json`` (``{"greeting", "visits", "secret_present"}``),
``GET /health`` (``ok``). The runtime sets ``PORT``, ``ENCLAVE_API_URL``,
``ENCLAVE_MGMT_TOKEN`` and the static secrets (here ``APP_SIGNING_KEY``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import string
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from enclave_core.appclient import AppApiError, EnclaveClient, NotFound, PreconditionFailed

DEFAULT_GREETING = "Hello from Simple Enclave!"
SIGNING_KEY_ENV = "APP_SIGNING_KEY"
VISITS_KEY = "visits"
API_TIMEOUT_S = 5.0
MAX_ATTEMPTS = 50


def secret_status() -> str:
    """Describe whether the static secret is present: its length and alphabet, never its value."""
    value = os.environ.get(SIGNING_KEY_ENV)
    if not value:
        return "no"
    kind = "hex chars" if all(c in string.hexdigits for c in value) else "chars"
    return f"yes ({len(value)} {kind})"


def app_api() -> EnclaveClient | None:
    """The app API the runtime gave this process, or None when run without it."""
    if not os.environ.get("ENCLAVE_API_URL") or not os.environ.get("ENCLAVE_MGMT_TOKEN"):
        return None
    return EnclaveClient.from_env(timeout=API_TIMEOUT_S)


def count_visit(api: EnclaveClient | None) -> int | None:
    """Add one to the visit counter in storage and return it (None without the app API).

    Optimistic concurrency: read the counter and its ETag, write it back with ``If-Match`` (or
    ``If-None-Match: *`` the first time); when another request won (412), pause a random, growing
    while and start again.
    """
    if api is None:
        return None
    for attempt in range(MAX_ATTEMPTS):
        try:
            current = api.get(VISITS_KEY)
            visits, etag = int(json.loads(current.data)["visits"]), current.etag
        except NotFound:
            visits, etag = 0, None
        body = json.dumps({"visits": visits + 1}).encode()
        try:
            api.put(VISITS_KEY, body, if_match=etag, if_none_match=etag is None)
            return visits + 1
        except PreconditionFailed:
            # Lost the race: random backoff spreads concurrent writers out.
            time.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.2)))
    raise RuntimeError(f"could not update {VISITS_KEY!r}: too much contention")


class Handler(BaseHTTPRequestHandler):
    """The app's routes, on HTTP/1.1 with keep-alive."""

    protocol_version = "HTTP/1.1"
    # The head and the body go out in two writes: without this each answer waits ~40 ms for a
    # delayed ACK (Nagle's algorithm).
    disable_nagle_algorithm = True
    server_version = "hello-enclave/1"

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        """Serve /, /json and /health."""
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
            return
        if path not in ("/", "/json"):
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        greeting = os.environ.get("GREETING") or DEFAULT_GREETING
        try:
            visits = count_visit(self.server.api if isinstance(self.server, Server) else None)
            visits_text = "unavailable (no app API)" if visits is None else str(visits)
        except (AppApiError, ValueError, KeyError, RuntimeError) as exc:
            visits, visits_text = None, f"unavailable ({type(exc).__name__})"
        if path == "/json":
            document = {
                "greeting": greeting,
                "visits": visits,
                "secret_present": bool(os.environ.get(SIGNING_KEY_ENV)),
            }
            self._send(200, "application/json", json.dumps(document).encode() + b"\n")
            return
        text = f"{greeting}\nvisits: {visits_text}\nsecret present: {secret_status()}\n"
        self._send(200, "text/plain; charset=utf-8", text.encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Stay quiet: the runtime already logs every request."""


class Server(ThreadingHTTPServer):
    """One thread per connection, sharing one app API client (it keeps a connection per thread)."""

    daemon_threads = True
    api: EnclaveClient | None = None


def main() -> int:
    """Serve on 127.0.0.1:$PORT until SIGTERM or Ctrl-C."""
    port = int(os.environ.get("PORT") or os.environ.get("ENCLAVE_APP_PORT") or "7074")
    server = Server(("127.0.0.1", port), Handler)
    server.api = app_api()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"hello app listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
