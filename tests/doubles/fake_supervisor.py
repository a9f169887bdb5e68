"""A stand-in supervisor management API for CLI tests: canned answers, recorded requests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from enclave_core.config import Config
from enclave_core.testing import free_port

#: The management-API token of the CLI tests' configs (the ``supervised_config`` fixture).
TOKEN = "ab" * 32


class FakeSupervisor:
    """Answers from ``answers[(method, path)]`` (404 otherwise); ``GET /v1/migrate`` answers from
    ``progress``, one document per call, while any are left, and any request from
    ``queued[(method, path)]`` likewise (a state that changes between calls). Records
    ``(method, path, authorization, json body or None)`` per request."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.progress: list[dict[str, Any]] = []
        self.queued: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
        self.requests: list[tuple[str, str, str | None, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers["Content-Length"] or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                fake.requests.append((self.command, self.path, self.headers["Authorization"], body))
                queued = fake.queued.get((self.command, self.path))
                if (self.command, self.path) == ("GET", "/v1/migrate") and fake.progress:
                    status, doc = 200, fake.progress.pop(0)
                elif queued:
                    status, doc = queued.pop(0)
                else:
                    status, doc = fake.answers.get((self.command, self.path), (404, {}))
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def running_supervisor() -> Iterator[FakeSupervisor]:
    """A started FakeSupervisor, shut down and closed afterwards."""
    fake = FakeSupervisor()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        fake.thread.join(5)


def config_for(make_config: Callable[..., Config], fake: FakeSupervisor, token: str) -> Config:
    """A development config pointing at ``fake``, with ``token`` in the supervisor's token file."""
    config = make_config(supervisor={"listen": fake.listen})
    path = config.state_dir / "supervisor" / "token"
    path.parent.mkdir(parents=True)
    path.write_text(token + "\n")
    return config
