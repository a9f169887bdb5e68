"""Errors the public listener answers itself are signed like the runtime's own answers."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_core.errors import AttestationError
from enclave_core.http.proxy import ProxyListener
from enclave_core.metrics import Metrics
from enclave_core.protocol.signing import (
    PUBKEY_HEADER,
    SIGNATURE_HEADER,
    listener_error_signer,
    public_key_hex,
    verify_response_signature,
)
from enclave_core.testing import free_port

Answer = tuple[int, dict[str, str], bytes]


async def _no_own_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def _request(port: int, headers: dict[str, str], target: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", target, headers=headers)
    response = conn.getresponse()
    result = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return result


def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is (it may be no valid HTTP) and read the answer to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def _unavailable_server(state: Any) -> ProxyListener:
    return ProxyListener(
        own_app=_no_own_app,
        is_own_path=lambda path: False,
        upstream_host="127.0.0.1",
        upstream_port=free_port(),
        metrics=Metrics(),
        app_unavailable=lambda: "the app is starting",
        error_signer=listener_error_signer(state),
    )


def _serve(state: Any, calls: list[Callable[[int], Answer]]) -> list[Answer]:
    async def scenario() -> list[Answer]:
        server = _unavailable_server(state)
        await server.start("tcp://127.0.0.1:0")
        try:
            return [await asyncio.to_thread(call, server.port) for call in calls]
        finally:
            await server.close()

    return asyncio.run(scenario())


def _verify(answer: Answer, method: str, target: str, nonce: str) -> None:
    status, headers, body = answer
    pubkey, signature = headers[PUBKEY_HEADER], headers[SIGNATURE_HEADER]
    verify_response_signature(pubkey, signature, method, target, status, body, nonce)


def test_a_503_written_by_the_listener_is_signed_with_the_nonce() -> None:
    key = Ed25519PrivateKey.generate()
    state: Any = SimpleNamespace(signing_key=key)
    answers = _serve(
        state,
        [
            lambda port: _request(port, {"X-Attestation-Nonce": "abc123"}, "/anything"),
            lambda port: _request(port, {}, "/anything"),
        ],
    )
    (status, headers, body), second = answers
    assert status == 503 and json.loads(body)["description"] == "the app is starting"
    assert headers[PUBKEY_HEADER] == public_key_hex(key)
    _verify(answers[0], "GET", "/anything", "abc123")
    _verify(second, "GET", "/anything", "")
    # the signature is bound to the nonce: it does not verify for another request's nonce
    with pytest.raises(AttestationError):
        _verify(answers[0], "GET", "/anything", "")


def test_the_listeners_errors_are_signed_over_the_method_and_target() -> None:
    state: Any = SimpleNamespace(signing_key=Ed25519PrivateKey.generate())
    target = "/anything/%2e%2E?q=%41&b"
    plain, absolute, put = _serve(
        state,
        [
            lambda port: _request(port, {}, target),
            lambda port: _raw(port, b"GET http://h.example/x?y=1 HTTP/1.1\r\nHost: h\r\n\r\n"),
            lambda port: _raw(port, b"PUT /up HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"),
        ],
    )
    assert plain[0] == absolute[0] == put[0] == 503
    _verify(plain, "GET", target, "")
    _verify(absolute, "GET", "/x?y=1", "")  # an absolute-form target: its path and query
    _verify(put, "PUT", "/up", "")
    # a recorded error is not the answer to another method or path, even without a nonce
    for method, other in (("GET", "/health"), ("POST", target), ("GET", "/anything/..?q=A&b")):
        with pytest.raises(AttestationError, match="method, path"):
            _verify(plain, method, other, "")


def test_an_unparsable_request_is_answered_signed_over_an_empty_method_and_target() -> None:
    state: Any = SimpleNamespace(signing_key=Ed25519PrivateKey.generate())
    garbage, bad_target = _serve(
        state,
        [
            lambda port: _raw(port, b"NOT HTTP AT ALL\r\n\r\n"),
            lambda port: _raw(port, b"GET http://[::1 HTTP/1.1\r\nHost: h\r\n\r\n"),
        ],
    )
    assert garbage[0] == bad_target[0] == 400
    _verify(garbage, "", "", "")
    _verify(bad_target, "", "", "")  # a request line whose target cannot be parsed
    with pytest.raises(AttestationError):
        _verify(garbage, "GET", "/", "")
