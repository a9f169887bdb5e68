"""The base image's digest from a registry speaking the Docker Registry HTTP API v2 (a local one,
with Docker Hub's anonymous bearer-token flow)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from enclave_core.deploy.registry import parse_reference, resolve_digest
from enclave_core.errors import EnclaveError, ValidationError

DIGEST = "sha256:" + "5e" * 32


class Registry(http.server.BaseHTTPRequestHandler):
    """Manifests need a token from ``/token``; the token is checked; ``Accept`` is recorded."""

    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # the token service
        if self.path.startswith("/token?"):
            body = json.dumps({"token": "t0k"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(404)
        self.end_headers()

    def do_HEAD(self) -> None:
        self.seen.append({"path": self.path, "accept": self.headers.get("Accept", ""),
                          "auth": self.headers.get("Authorization")})  # fmt: skip
        if self.headers.get("Authorization") != "Bearer t0k":
            host = self.headers["Host"]
            self.send_response(401)
            self.send_header(
                "WWW-Authenticate",
                f'Bearer realm="http://{host}/token",service="registry.test",'
                'scope="repository:library/python:pull"',
            )
            self.end_headers()
            return
        if self.path != "/v2/library/python/manifests/3.11-slim-bookworm":
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Docker-Content-Digest", DIGEST)
        self.end_headers()


@pytest.fixture
def registry() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Registry.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_digest_comes_from_the_registry_after_its_token(registry: str) -> None:
    assert resolve_digest("python:3.11-slim-bookworm", registry_url=registry) == DIGEST
    first, second = Registry.seen
    assert first["auth"] is None and second["auth"] == "Bearer t0k"
    assert second["accept"].startswith("application/vnd.oci.image.index.v1+json")


def test_an_unknown_tag_says_how_to_go_on_without_the_registry(
    registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENCLAVE_REGISTRY_URL", registry)
    with pytest.raises(EnclaveError) as caught:
        resolve_digest("python:3.99-nothing")
    assert "HTTP 404" in str(caught.value)
    assert "enclave lock --base-digest sha256:" in str(caught.value)


def test_references() -> None:
    assert parse_reference("python:3.11-slim").repository == "library/python"
    assert parse_reference("python:3.11-slim").registry == "registry-1.docker.io"
    assert parse_reference("myorg/base:1").repository == "myorg/base"
    ref = parse_reference("public.ecr.aws/docker/library/python:3.11")
    assert (ref.registry, ref.repository, ref.tag) == (
        "public.ecr.aws",
        "docker/library/python",
        "3.11",
    )
    with pytest.raises(ValidationError, match="is not NAME:TAG"):
        parse_reference("python@sha256:" + "0" * 64)
