"""The runtime's own public routes and the control app."""

from __future__ import annotations

import base64
from collections.abc import Callable

import falcon.testing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_core import __version__
from enclave_core.config import Config
from enclave_core.crypto import cose
from enclave_core.metrics import COUNTERS
from enclave_core.protocol.userdata import attestation_user_data
from enclave_core.runtime.own_routes import create_control_app, create_public_app, is_own_path
from enclave_core.runtime.state import RuntimeState
from tests.doubles.memory_backends import MemoryNsm


@pytest.fixture
def state(make_config: Callable[..., Config]) -> RuntimeState:
    return RuntimeState(make_config())


@pytest.fixture
def client(state: RuntimeState) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_public_app(state))


def attested(state: RuntimeState) -> MemoryNsm:
    nsm = MemoryNsm()
    state.attestation = nsm
    state.signing_key = Ed25519PrivateKey.generate()
    return nsm


def test_health_follows_boot(state: RuntimeState, client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/health")
    assert result.status_code == 503
    assert result.json == {"status": "initializing", "stage": "config"}
    state.enter_stage("attestation")
    assert client.simulate_get("/health").json == {"status": "initializing", "stage": "attestation"}
    state.stage, state.app_up = "app", True
    ready = client.simulate_get("/health")
    assert (ready.status_code, ready.json) == (200, {"status": "ready"})
    state.app_problem = "app exited with code 1; restarting in 0.5s"
    degraded = client.simulate_get("/health")
    assert degraded.status_code == 503
    assert degraded.json == {
        "status": "degraded",
        "error": "app exited with code 1; restarting in 0.5s",
    }
    state.boot_error = "boot stage kms_key failed: no key"
    assert client.simulate_get("/health").json["error"] == "boot stage kms_key failed: no key"


def test_control_app_serves_the_same_health(state: RuntimeState) -> None:
    control = falcon.testing.TestClient(create_control_app(state))
    state.stage, state.app_up = "app", True
    assert control.simulate_get("/health").json == {"status": "ready"}
    assert control.simulate_get("/v1/enclave-info").status_code == 404


def test_enclave_info_fields(state: RuntimeState, client: falcon.testing.TestClient) -> None:
    early = client.simulate_get("/v1/enclave-info").json
    assert early["name"] == "hello" and early["pcr0"] is None and early["kms_key_id"] is None
    state.pcr0, state.attestation_pubkey, state.kms_key_id = "ab" * 48, "cd" * 32, "key-1"
    state.dynamic_secrets = 2
    state.metrics.inc("storage_writes", 3)
    info = client.simulate_get("/v1/enclave-info").json
    assert set(info) == {
        "name",
        "version",
        "pcr0",
        "attestation_pubkey",
        "tls_cert_sha256",
        "kms_key_id",
        "previous_pcr0",
        "previous_pcr0_attestation",
        "pcr8",
        "key_origin",
        "migration_chain",
        "migration_chain_complete",
        "dynamic_secrets",
        "metrics",
    }
    assert info["version"] == __version__
    assert (info["pcr0"], info["attestation_pubkey"], info["kms_key_id"]) == (
        "ab" * 48,
        "cd" * 32,
        "key-1",
    )
    assert info["tls_cert_sha256"] is None
    # Unknown until boot has checked the chain link; then "genesis" or the verified link.
    assert (info["previous_pcr0"], info["previous_pcr0_attestation"]) == (None, None)
    assert (info["pcr8"], info["key_origin"], info["migration_chain"]) == (None, None, None)
    state.previous_pcr0 = "genesis"
    assert client.simulate_get("/v1/enclave-info").json["previous_pcr0"] == "genesis"
    assert info["dynamic_secrets"] == 2
    assert list(info["metrics"]) == list(COUNTERS)
    assert info["metrics"]["storage_writes"] == 3


def test_attestation_binds_nonce_and_user_data(
    state: RuntimeState, client: falcon.testing.TestClient
) -> None:
    nsm = attested(state)
    result = client.simulate_get("/enclave/attestation", params={"nonce": "00ff" * 10})
    assert result.status_code == 200
    assert result.headers["Content-Type"].startswith("text/plain")
    document = base64.b64decode(result.text, validate=True)
    payload = cose.decode_document(cose.decode_sign1(document).payload)
    assert payload["nonce"] == bytes.fromhex("00ff" * 10)
    assert state.signing_key is not None
    raw = state.signing_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert nsm.documents == [
        {
            "nonce": bytes.fromhex("00ff" * 10),
            "user_data": attestation_user_data(None, raw),
            "public_key": None,
        }
    ]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({}, "required"),
        ({"nonce": "xyz"}, "hexadecimal"),
        ({"nonce": "abc"}, "hexadecimal"),
        ({"nonce": "00" * 1025}, "1 to 1024"),
    ],
)
def test_attestation_rejects_bad_nonces(
    state: RuntimeState, client: falcon.testing.TestClient, params: dict[str, str], fragment: str
) -> None:
    nsm = attested(state)
    result = client.simulate_get("/enclave/attestation", params=params)
    assert result.status_code == 400
    assert fragment in result.json["description"]
    assert nsm.documents == []


def test_attestation_before_boot_is_503(client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/enclave/attestation", params={"nonce": "01"})
    assert result.status_code == 503 and "boot stage config" in result.json["description"]


def test_is_own_path() -> None:
    assert is_own_path("/health") and is_own_path("/v1/enclave-info")
    assert is_own_path("/enclave/attestation?nonce=00")
    assert is_own_path("/openapi.json")  # the runtime's document, never the app's
    assert not is_own_path("/") and not is_own_path("/healthz") and not is_own_path("/v1/storage")
    assert not is_own_path("/health/x")
