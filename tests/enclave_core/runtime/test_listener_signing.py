"""Errors the public listener answers itself are signed like the runtime's own answers."""

from __future__ import annotations

import asyncio
import http.client
import json
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_core.errors import AttestationError
from enclave_core.metrics import Metrics
from enclave_core.runtime.proxy import PublicServer
from enclave_core.runtime.signing import (
    PUBKEY_HEADER,
    SIGNATURE_HEADER,
    listener_error_signer,
    public_key_hex,
    verify_response_signature,
)
from enclave_core.testing import free_port


async def _no_own_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def _request(port: int, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/anything", headers=headers)
    response = conn.getresponse()
    result = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return result


def test_a_503_written_by_the_listener_is_signed_with_the_nonce() -> None:
    key = Ed25519PrivateKey.generate()
    state: Any = SimpleNamespace(signing_key=key)

    async def scenario() -> list[tuple[int, dict[str, str], bytes]]:
        server = PublicServer(
            own_app=_no_own_app,
            is_own_path=lambda path: False,
            upstream_host="127.0.0.1",
            upstream_port=free_port(),
            metrics=Metrics(),
            app_unavailable=lambda: "the app is starting",
            error_signer=listener_error_signer(state),
        )
        await server.start("tcp://127.0.0.1:0")
        try:
            return [
                await asyncio.to_thread(_request, server.port, {"X-Attestation-Nonce": "abc123"}),
                await asyncio.to_thread(_request, server.port, {}),
            ]
        finally:
            await server.close()

    (status, headers, body), (status2, headers2, body2) = asyncio.run(scenario())
    assert status == 503 and json.loads(body)["description"] == "the app is starting"
    assert headers[PUBKEY_HEADER] == public_key_hex(key)
    pubkey, signature = headers[PUBKEY_HEADER], headers[SIGNATURE_HEADER]
    verify_response_signature(pubkey, signature, 503, body, "abc123")
    verify_response_signature(headers2[PUBKEY_HEADER], headers2[SIGNATURE_HEADER], 503, body2, "")
    # the signature is bound to the nonce: it does not verify for another request's nonce
    with pytest.raises(AttestationError):
        verify_response_signature(pubkey, signature, 503, body, "")
