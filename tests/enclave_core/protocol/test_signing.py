"""Signed responses: the canonical string, verification, and the public app's middleware."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import falcon.testing
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_core.config import Config
from enclave_core.errors import AttestationError
from enclave_core.protocol.signing import (
    canonical_message,
    check_nonce,
    public_key_hex,
    sign_response,
    verify_response_signature,
)
from enclave_core.runtime.own_routes import create_control_app, create_public_app
from enclave_core.runtime.state import RuntimeState
from tests.doubles.memory_backends import MemoryNsm

BODY = b'{"status": "ready"}'


def test_the_canonical_string_is_exactly_documented() -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    assert canonical_message("get", "/health?a=%41&b", 200, BODY, "abc_-9") == (
        f"simple-enclave-response-v2\nGET\n/health?a=%41&b\n200\n{digest}\nabc_-9\n".encode()
    )
    empty = hashlib.sha256(b"").hexdigest()
    assert (
        canonical_message("", "", 503, b"", "")
        == f"simple-enclave-response-v2\n\n\n503\n{empty}\n\n".encode()
    )
    for status in (99, 1000, True):
        with pytest.raises(ValueError, match="status"):
            canonical_message("GET", "/", status, BODY, "")


@pytest.mark.parametrize(
    ("method", "target", "what"),
    [
        ("GE\nT", "/", "method"),
        ("GET", "/health\n200", "target"),
        ("GET", "/a\rb", "target"),
        ("GET", "/a\x00", "target"),
        ("GET", "/a\x7f", "target"),
        ("GET", "/caf\u00e9", "target"),
        ("G\u00c9T", "/", "method"),
        ("GET", "/a b", "target"),
    ],
)
def test_a_method_or_target_that_could_forge_a_line_is_refused(
    method: str, target: str, what: str
) -> None:
    with pytest.raises(ValueError, match=what):
        canonical_message(method, target, 200, BODY, "")


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
    sig = sign_response(key, "GET", "/health", 200, BODY, "n0nce")
    assert len(bytes.fromhex(sig)) == 64
    verify_response_signature(pub, sig, "GET", "/health", 200, BODY, "n0nce")
    verify_response_signature(pub.upper(), sig, "GET", "/health", 200, BODY, "n0nce")  # hex case
    verify_response_signature(pub, sig, "get", "/health", 200, BODY, "n0nce")  # method upper-cased
    tampered = [
        (pub, sig, "POST", "/health", 200, BODY, "n0nce"),  # method
        (pub, sig, "GET", "/v1/enclave-info", 200, BODY, "n0nce"),  # path: another route's answer
        (pub, sig, "GET", "/health?x=1", 200, BODY, "n0nce"),  # query
        (pub, sig, "GET", "/Health", 200, BODY, "n0nce"),
        (pub, sig, "GET", "/health", 201, BODY, "n0nce"),  # status
        (pub, sig, "GET", "/health", 200, BODY + b" ", "n0nce"),  # body
        (pub, sig, "GET", "/health", 200, BODY, "other"),  # nonce: the answer to another request
        (pub, sig, "GET", "/health", 200, BODY, ""),
        (public_key_hex(Ed25519PrivateKey.generate()), sig, "GET", "/health", 200, BODY, "n0nce"),
        (
            pub,
            sig[:-2] + ("00" if sig[-2:] != "00" else "01"),
            "GET",
            "/health",
            200,
            BODY,
            "n0nce",
        ),
    ]
    for args in tampered:
        with pytest.raises(AttestationError, match="response signature does not verify"):
            verify_response_signature(*args)
    with pytest.raises(AttestationError) as exc:
        verify_response_signature(pub, sig, "GET", "/v1/enclave-info", 200, BODY, "n0nce")
    assert str(exc.value) == (
        "response signature does not verify: the signature does not match the method, path, "
        "status, body and nonce"
    )
    with pytest.raises(AttestationError, match="does not verify: .*target"):
        verify_response_signature(pub, sig, "GET", "/health\n", 200, BODY, "n0nce")


def test_a_response_to_one_path_is_not_the_answer_to_another_without_a_nonce() -> None:
    # With no nonce (or a reused one) only the method and the path tell two answers apart.
    key = Ed25519PrivateKey.generate()
    pub = public_key_hex(key)
    sig = sign_response(key, "GET", "/health", 200, BODY, "")
    verify_response_signature(pub, sig, "GET", "/health", 200, BODY, "")
    for method, target in (("GET", "/v1/enclave-info"), ("HEAD", "/health"), ("", "")):
        with pytest.raises(AttestationError, match="does not match the method, path"):
            verify_response_signature(pub, sig, method, target, 200, BODY, "")


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
    sig = sign_response(key, "GET", "/", 200, BODY, "") if sig == "S" else sig
    with pytest.raises(AttestationError, match=fragment):
        verify_response_signature(pub, sig, "GET", "/", 200, BODY, "")


@pytest.fixture
def state(make_config: Callable[..., Config]) -> RuntimeState:
    state = RuntimeState(make_config())
    state.signing_key = Ed25519PrivateKey.generate()
    state.attestation = MemoryNsm()
    return state


def check_signed(
    result: falcon.testing.Result, state: RuntimeState, method: str, target: str, nonce: str
) -> None:
    assert state.signing_key is not None
    assert result.headers["X-Attestation-Pubkey"] == public_key_hex(state.signing_key)
    verify_response_signature(
        result.headers["X-Attestation-Pubkey"],
        result.headers["X-Attestation-Signature"],
        method,
        target,
        result.status_code,
        result.content,
        nonce,
    )


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/health", ""),
        ("/v1/enclave-info", ""),
        ("/enclave/attestation", "nonce=00ff"),
        ("/enclave/attestation", "nonce=zz"),  # the runtime's 400 is signed too
    ],
)
def test_the_public_apps_answers_are_signed_over_the_request(
    state: RuntimeState, path: str, query: str
) -> None:
    client = falcon.testing.TestClient(create_public_app(state))
    target = f"{path}?{query}" if query else path
    result = client.simulate_get(path, query_string=query, headers={"X-Attestation-Nonce": "req-1"})
    assert result.content  # something real was signed
    check_signed(result, state, "GET", target, "req-1")
    with pytest.raises(AttestationError):
        check_signed(result, state, "GET", target, "req-2")  # the answer to another request
    unbound = client.simulate_get(path, query_string=query)
    check_signed(unbound, state, "GET", target, "")
    # With no nonce, a recorded answer still is not the answer to another route or method.
    for method, other in (
        ("GET", "/health" if path != "/health" else "/v1/enclave-info"),
        ("POST", target),
        ("GET", f"{target}&x" if query else f"{path}?x"),
    ):
        with pytest.raises(AttestationError, match="method, path"):
            check_signed(unbound, state, method, other, "")


def test_the_target_is_signed_as_the_client_sent_it(state: RuntimeState) -> None:
    # Percent-encoding is kept as sent: the route is the same, the signed target is not.
    client = falcon.testing.TestClient(create_public_app(state))
    result = client.simulate_get("/v1/enclave%2Dinfo", query_string="a=%41&b=c+d")
    assert result.status_code == 200
    check_signed(result, state, "GET", "/v1/enclave%2Dinfo?a=%41&b=c+d", "")
    for decoded in ("/v1/enclave-info?a=%41&b=c+d", "/v1/enclave%2Dinfo?a=A&b=c d"):
        with pytest.raises(AttestationError):
            check_signed(result, state, "GET", decoded, "")


def test_a_target_that_cannot_be_signed_is_a_400_signed_without_it(state: RuntimeState) -> None:
    client = falcon.testing.TestClient(create_public_app(state))
    result = client.simulate_get("/caf\u00e9", headers={"X-Attestation-Nonce": "n"})
    assert result.status_code == 400 and "visible ASCII" in result.json["description"]
    check_signed(result, state, "", "", "n")


def test_errors_and_head_requests_are_signed(state: RuntimeState) -> None:
    client = falcon.testing.TestClient(create_public_app(state))
    refused = client.simulate_post("/health", headers={"X-Attestation-Nonce": "n"})
    assert refused.status_code == 405
    check_signed(refused, state, "POST", "/health", "n")
    head = client.simulate_head("/health", headers={"X-Attestation-Nonce": "n"})
    assert head.content == b""
    check_signed(head, state, "HEAD", "/health", "n")
    with pytest.raises(AttestationError):
        check_signed(head, state, "GET", "/health", "n")
    missing = client.simulate_get("/nowhere")
    assert missing.status_code == 404
    check_signed(missing, state, "GET", "/nowhere", "")


def test_a_bad_nonce_header_is_a_signed_400(state: RuntimeState) -> None:
    client = falcon.testing.TestClient(create_public_app(state))
    for bad in ("x" * 257, "a;b"):
        result = client.simulate_get("/health", headers={"X-Attestation-Nonce": bad})
        assert result.status_code == 400
        assert "X-Attestation-Nonce" in result.json["description"]
        check_signed(result, state, "GET", "/health", "")


def test_nothing_is_signed_before_the_key_exists(make_config: Callable[..., Config]) -> None:
    state = RuntimeState(make_config())
    result = falcon.testing.TestClient(create_public_app(state)).simulate_get("/health")
    assert result.status_code == 503
    assert "X-Attestation-Signature" not in result.headers


def test_the_control_app_is_not_signed(state: RuntimeState) -> None:
    result = falcon.testing.TestClient(create_control_app(state)).simulate_get("/health")
    assert result.status_code == 503 and "X-Attestation-Signature" not in result.headers
