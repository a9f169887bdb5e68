"""The example app `enclave init` writes: greets, counts visits with ETags, hides the secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from enclave_core.testing import free_port

APP = Path(__file__).resolve().parents[3] / "enclave_core" / "templates" / "app.py"
TOKEN = "t" * 64
SECRET = "0123456789abcdef" * 4


class StorageApi:
    """A stand-in for the runtime's app API storage routes: ETags and conditional PUTs."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.lock = threading.Lock()
        self.conflicts = 0
        self.version = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, status: int, body: bytes = b"", etag: str | None = None) -> None:
                self.send_response(status)
                if etag:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.headers["Authorization"] != f"Bearer {TOKEN}":
                    self._reply(401)
                    return
                with api.lock:
                    found = api.objects.get(self.path)
                if found is None:
                    self._reply(404, b'{"title": "Not found"}')
                else:
                    self._reply(200, found[0], found[1])

            def do_PUT(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(0.01)  # widen the race window so conflicts really happen
                with api.lock:
                    current = api.objects.get(self.path)
                    if_match = self.headers["If-Match"]
                    if (self.headers["If-None-Match"] == "*" and current is not None) or (
                        if_match is not None and (current is None or current[1] != if_match)
                    ):
                        api.conflicts += 1
                        self._reply(412)
                        return
                    api.version += 1
                    etag = f'"v{api.version}"'
                    api.objects[self.path] = (body, etag)
                self._reply(201 if current is None else 200, b"{}", etag)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def storage_api() -> Iterator[StorageApi]:
    api = StorageApi()
    thread = threading.Thread(target=api.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()
        thread.join(5)


def start_app(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ENCLAVE_", "APP_"))}
    process = subprocess.Popen(
        [sys.executable, str(APP)],
        env={**base, "PORT": str(port), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if get(url + "/health") == (200, "ok\n"):
                return process, url
        except OSError:
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.05)


def stop_app(process: subprocess.Popen[bytes]) -> int:
    process.terminate()
    return process.wait(timeout=10)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def test_greets_counts_visits_and_never_shows_the_secret(storage_api: StorageApi) -> None:
    process, url = start_app(
        {"ENCLAVE_API_URL": storage_api.url, "ENCLAVE_MGMT_TOKEN": TOKEN, "APP_SIGNING_KEY": SECRET}
    )
    try:
        status, page = get(url + "/")
        assert status == 200
        assert page.splitlines() == [
            "Hello from Simple Enclave!",
            "visits: 1",
            "secret present: yes (64 hex chars)",
        ]
        assert json.loads(get(url + "/json")[1]) == {
            "greeting": "Hello from Simple Enclave!",
            "visits": 2,
            "secret_present": True,
        }
        assert SECRET not in page
        assert storage_api.objects["/v1/storage/visits"][0] == b'{"visits": 2}'
        assert get(url + "/nope")[0] == 404
    finally:
        assert stop_app(process) == 0  # SIGTERM is a clean stop


def test_concurrent_visits_are_all_counted(storage_api: StorageApi) -> None:
    process, url = start_app({"ENCLAVE_API_URL": storage_api.url, "ENCLAVE_MGMT_TOKEN": TOKEN})
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: json.loads(get(url + "/json")[1]), range(24)))
        assert sorted(answer["visits"] for answer in answers) == list(range(1, 25))
        assert storage_api.conflicts > 0  # the 412 retry path was taken
    finally:
        stop_app(process)


def test_without_the_app_api_or_secret() -> None:
    process, url = start_app({"GREETING": "Bonjour"})
    try:
        assert get(url + "/")[1].splitlines() == [
            "Bonjour",
            "visits: unavailable (no app API)",
            "secret present: no",
        ]
        assert json.loads(get(url + "/json")[1]) == {
            "greeting": "Bonjour",
            "visits": None,
            "secret_present": False,
        }
    finally:
        stop_app(process)
