"""End to end: each listener of a real `enclave dev` serves the committed OpenAPI document, and
its answers are the ones the document describes (status, media type, schema)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclave_core.cli.apidocs import REGENERATE
from enclave_core.protocol.signing import (
    NONCE_HEADER,
    PUBKEY_HEADER,
    SIGNATURE_HEADER,
    verify_response_signature,
)
from tests.e2e.stack import DevStack, http, make_stack
from tests.enclave_core.http.openapi_conformance import check_answer
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api"


def committed(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DOCS / name).read_text(encoding="utf-8"))
    return document


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    yield from make_stack(tmp_path_factory.mktemp("openapi") / "hello").running()


class Listener:
    """One listener of the stack, its committed document and a checked request method."""

    def __init__(self, base: str, name: str, headers: dict[str, str] | None = None) -> None:
        self.base = base
        self.document = committed(name)
        self.name = name
        self.headers = headers or {}

    def __call__(
        self,
        method: str,
        path: str,
        expected: int,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[dict[str, str], bytes]:
        status, answer_headers, answer = http(
            method, self.base + path, body, {**self.headers, **(headers or {})}
        )
        assert status == expected, (self.name, method, path, status, answer[:300])
        check_answer(self.document, method, path, status, answer_headers, answer)
        return {k.lower(): v for k, v in answer_headers.items()}, answer


def listeners(stack: DevStack) -> dict[str, Listener]:
    runtime = stack.document["runtime"]
    token = stack.app_env()["ENCLAVE_MGMT_TOKEN"]
    return {
        "public": Listener(f"http://127.0.0.1:{runtime['port']}", "runtime-public.json"),
        "control": Listener(f"http://127.0.0.1:{runtime['control_port']}", "runtime-control.json"),
        "app": Listener(
            stack.app_api_url, "runtime-app.json", {"Authorization": f"Bearer {token}"}
        ),
        "supervisor": Listener(stack.supervisor_url, "supervisor.json"),
    }


def test_every_listener_serves_the_committed_document(stack: DevStack) -> None:
    for name, listener in listeners(stack).items():
        headers, body = listener("GET", "/openapi.json", 200, headers={NONCE_HEADER: "e2e"})
        assert json.loads(body) == listener.document, (
            f"{name} serves another document than docs/api/{listener.name}; "
            f"regenerate with: {REGENERATE}"
        )
        if name == "public":  # signed like the runtime's other own answers
            verify_response_signature(
                headers[PUBKEY_HEADER.lower()],
                headers[SIGNATURE_HEADER.lower()],
                "GET",
                "/openapi.json",
                200,
                body,
                "e2e",
            )
    # Through the ingress too: the path is the runtime's own, never the app's.
    status, _, body = http("GET", stack.ingress_url + "/openapi.json")
    assert status == 200 and json.loads(body) == committed("runtime-public.json")
    app = listeners(stack)["app"]
    app("GET", "/openapi.json", 401, headers={"Authorization": ""})
    app("GET", "/openapi.json", 403, headers={"Authorization": "Bearer " + "0" * 64})


def test_runtime_answers_match_the_documents(stack: DevStack) -> None:
    found = listeners(stack)
    public, control, app = found["public"], found["control"], found["app"]
    public("GET", "/health", 200)
    public("GET", "/health", 400, headers={NONCE_HEADER: "not/valid"})
    public("GET", "/v1/enclave-info", 200)
    _, document = public("GET", "/enclave/attestation?nonce=" + "ab" * 32, 200)
    assert base64.b64decode(document, validate=True)
    public("GET", "/enclave/attestation", 400)
    public("GET", "/enclave/attestation?nonce=xyz", 400)
    public("POST", "/v1/export-key", 404, b"{}")

    control("GET", "/health", 200)
    control("POST", "/v1/export-key", 409, b"{}")  # no migration in progress
    control("POST", "/v1/export-key", 400, b'{"key_id": "mine"}')
    control("POST", "/v1/export-key", 413, b" " * 2048)

    app("GET", "/v1/storage", 200)
    app("GET", "/v1/storage?prefix=/x", 400)
    app("GET", "/v1/storage", 401, headers={"Authorization": ""})
    app("GET", "/v1/storage", 403, headers={"Authorization": "Bearer " + "0" * 64})
    etag = app("PUT", "/v1/storage/docs/a.bin", 201, b"\x00\x01")[0]["etag"]
    app("PUT", "/v1/storage/docs/a.bin", 412, b"x", {"If-None-Match": "*"})
    app("PUT", "/v1/storage/docs/a.bin", 201, b"y", {"If-Match": etag})
    app("PUT", "/v1/storage/docs/a.bin", 400, b"z", {"If-None-Match": etag})
    app("PUT", "/v1/storage/docs/..%2Fx", 400, b"x")
    assert app("GET", "/v1/storage/docs/a.bin", 200)[1] == b"y"
    app("DELETE", "/v1/storage/docs/a.bin", 200)
    app("DELETE", "/v1/storage/docs/a.bin", 404)
    app("GET", "/v1/storage/docs/a.bin", 404)
    secret = json.dumps({"value": "v-1", "env_var": "E2E_SECRET"}).encode()
    app("PUT", "/v1/secrets/e2e", 201, secret)
    app("PUT", "/v1/secrets/e2e", 400, b'{"value": "v", "other": 1}')
    app("PUT", "/v1/secrets/e2e", 400, b'{"value": "v", "env_var": "PORT"}')
    app("GET", "/v1/secrets/e2e", 200)
    app("GET", "/v1/secrets", 200)
    app("DELETE", "/v1/secrets/e2e", 200)
    app("GET", "/v1/secrets/e2e", 404)
    data = json.dumps({"pcr": 20, "data": base64.b64encode(b"e2e").decode()}).encode()
    app("POST", "/v1/extend-pcr", 200, data)
    app("POST", "/v1/extend-pcr", 400, b'{"pcr": 15, "data": ""}')
    app("POST", "/v1/lock-pcr", 200, b'{"pcr": 20}')
    app("POST", "/v1/extend-pcr", 409, data)


def test_supervisor_answers_match_its_document(stack: DevStack) -> None:
    supervisor = listeners(stack)["supervisor"]
    auth = {"Authorization": f"Bearer {stack.token}"}
    supervisor("GET", "/health", 200)
    supervisor("GET", "/v1/enclave-info", 200)
    supervisor("GET", "/metrics", 200)
    supervisor("GET", "/v1/migrate", 200)
    supervisor("POST", "/v1/migrate", 401, b"{}")
    supervisor("POST", "/v1/migrate", 403, b"{}", {"Authorization": "Bearer wrong"})
    supervisor("POST", "/v1/migrate", 400, b"{}", auth)
    supervisor("POST", "/v1/migrate", 400, b'{"app_dir": "relative"}', auth)
    supervisor("POST", "/v1/schedule-key-deletion", 400, b'{"days": 3}', auth)
    supervisor("POST", "/v1/schedule-key-deletion", 409, b"", auth)  # no old key
    supervisor("POST", "/v1/start", 409, b"", auth)
    supervisor("POST", "/v1/stop", 200, b"", auth)
    supervisor("POST", "/v1/stop", 409, b"", auth)
    supervisor("GET", "/health", 503)
    supervisor("GET", "/v1/enclave-info", 503)
    supervisor("POST", "/v1/start", 200, b"", auth)
    wait_for(lambda: stack.health()["status"] == "running", timeout=60)
