"""Signed responses: the canonical string, verification, and the public app's middleware."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import falcon.testing
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_core.config import Config
from enclave_core.errors import AttestationError
from enclave_core.runtime.public import create_control_app, create_public_app
from enclave_core.runtime.signing import (
    canonical_message,
    check_nonce,
    public_key_hex,
    sign_response,
    verify_response_signature,
)
from enclave_core.runtime.state import RuntimeState
from tests.enclave_core.runtime.doubles import MemoryNsm

BODY = b'{"status": "ready"}'


def test_the_canonical_string_is_exactly_documented() -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    assert canonical_message(200, BODY, "abc_-9") == (
        f"simple-enclave-response-v1\n200\n{digest}\nabc_-9\n".encode()
    )
    empty = hashlib.sha256(b"").hexdigest()
    assert (
        canonical_message(503, b"", "") == f"simple-enclave-response-v1\n503\n{empty}\n\n".encode()
    )
    for status in (99, 1000, True):
        with pytest.raises(ValueError, match="status"):
            canonical_message(status, BODY, "")


def test_nonces_are_bounded_and_restricted() -> None:
    assert check_nonce("") == ""
    assert check_nonce("A" * 256) == "A" * 256
    for bad in ("A" * 257, "a b", "a/b", "é", "a\n"):
        with pytest.raises(ValueError, match="256 characters"):
            check_nonce(bad)


def test_a_signature_verifies_and_tampering_fails() -> None:
    key = Ed25519PrivateKey.generate()
    pub = public_key_hex(key)
    assert len(bytes.fromhex(pub)) == 32
    sig = sign_response(key, 200, BODY, "n0nce")
    assert len(bytes.fromhex(sig)) == 64
    verify_response_signature(pub, sig, 200, BODY, "n0nce")
    verify_response_signature(pub.upper(), sig, 200, BODY, "n0nce")  # hex case is not signed
    tampered = [
        (pub, sig, 201, BODY, "n0nce"),  # status
        (pub, sig, 200, BODY + b" ", "n0nce"),  # body
        (pub, sig, 200, BODY, "other"),  # nonce: the answer to another request
        (pub, sig, 200, BODY, ""),
        (public_key_hex(Ed25519PrivateKey.generate()), sig, 200, BODY, "n0nce"),  # key
        (pub, sig[:-2] + ("00" if sig[-2:] != "00" else "01"), 200, BODY, "n0nce"),
    ]
    for args in tampered:
        with pytest.raises(AttestationError, match="response signature does not verify"):
            verify_response_signature(*args)


@pytest.mark.parametrize(
    ("pub", "sig", "fragment"),
    [
        ("P", None, "no X-Attestation-Signature header"),
        (None, "S", "no X-Attestation-Pubkey header"),
        ("P", "zz", "X-Attestation-Signature header is not hex"),
        ("P", "00" * 63, "has 63 bytes, expected 64"),
        ("00" * 31, "S", "has 31 bytes, expected 32"),
    ],
)
def test_malformed_headers_fail(pub: str | None, sig: str | None, fragment: str) -> None:
    key = Ed25519PrivateKey.generate()
    pub = public_key_hex(key) if pub == "P" else pub
    sig = sign_response(key, 200, BODY, "") if sig == "S" else sig
    with pytest.raises(AttestationError, match=fragment):
        verify_response_signature(pub, sig, 200, BODY, "")


@pytest.fixture
def state(make_config: Callable[..., Config]) -> RuntimeState:
    state = RuntimeState(make_config())
    state.signing_key = Ed25519PrivateKey.generate()
    state.attestation = MemoryNsm()
    return state


def check_signed(result: falcon.testing.Result, state: RuntimeState, nonce: str) -> None:
    assert state.signing_key is not None
    assert result.headers["X-Attestation-Pubkey"] == public_key_hex(state.signing_key)
    verify_response_signature(
        result.headers["X-Attestation-Pubkey"],
        result.headers["X-Attestation-Signature"],
        result.status_code,
        result.content,
        nonce,
    )


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/health", None),
        ("/v1/enclave-info", None),
        ("/enclave/attestation", {"nonce": "00ff"}),
        ("/enclave/attestation", {"nonce": "zz"}),  # the runtime's 400 is signed too
    ],
)
def test_the_public_apps_answers_are_signed_over_the_nonce(
    state: RuntimeState, path: str, params: dict[str, str] | None
) -> None:
    client = falcon.testing.TestClient(create_public_app(state))
    result = client.simulate_get(path, params=params, headers={"X-Attestation-Nonce": "req-1"})
    assert result.content  # something real was signed
    check_signed(result, state, "req-1")
    with pytest.raises(AttestationError):
        check_signed(result, state, "req-2")  # not valid as the answer to another request
    unbound = client.simulate_get(path, params=params)
    check_signed(unbound, state, "")


def test_errors_and_head_requests_are_signed(state: RuntimeState) -> None:
    client = falcon.testing.TestClient(create_public_app(state))
    refused = client.simulate_post("/health", headers={"X-Attestation-Nonce": "n"})
    assert refused.status_code == 405
    check_signed(refused, state, "n")
    head = client.simulate_head("/health", headers={"X-Attestation-Nonce": "n"})
    assert head.content == b""
    check_signed(head, state, "n")


def test_a_bad_nonce_header_is_a_signed_400(state: RuntimeState) -> None:
    client = falcon.testing.TestClient(create_public_app(state))
    for bad in ("x" * 257, "a;b"):
        result = client.simulate_get("/health", headers={"X-Attestation-Nonce": bad})
        assert result.status_code == 400
        assert "X-Attestation-Nonce" in result.json["description"]
        check_signed(result, state, "")


def test_nothing_is_signed_before_the_key_exists(make_config: Callable[..., Config]) -> None:
    state = RuntimeState(make_config())
    result = falcon.testing.TestClient(create_public_app(state)).simulate_get("/health")
    assert result.status_code == 503
    assert "X-Attestation-Signature" not in result.headers


def test_the_control_app_is_not_signed(state: RuntimeState) -> None:
    result = falcon.testing.TestClient(create_control_app(state)).simulate_get("/health")
    assert result.status_code == 503 and "X-Attestation-Signature" not in result.headers
