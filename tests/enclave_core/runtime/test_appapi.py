"""The app API through falcon.testing: auth, storage, dynamic secrets, PCRs and errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import falcon
import falcon.testing
import pytest

from enclave_core.config import Config
from enclave_core.crypto.envelope import EncryptedStorage
from enclave_core.runtime.appapi import MAX_JSON_BODY, MAX_STORAGE_BODY, create_app_api, read_body
from enclave_core.runtime.dynsecrets import DynamicSecrets
from enclave_core.runtime.instrumented import CountingStorage
from enclave_core.runtime.state import RuntimeState
from tests.doubles.memory_backends import DOUBLES_CONFIG, MemoryNsm, MemoryStorage

TOKEN = "ab" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def backend() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def memory_nsm() -> MemoryNsm:
    return MemoryNsm()


@pytest.fixture
def state(
    make_config: Callable[..., Config], backend: MemoryStorage, memory_nsm: MemoryNsm
) -> RuntimeState:
    config = make_config(**DOUBLES_CONFIG)
    state = RuntimeState(config)
    storage = CountingStorage(EncryptedStorage(backend, bytes(32)), state.metrics)
    state.attestation = memory_nsm
    state.storage = storage
    state.dynamic = DynamicSecrets(storage, state.metrics, frozenset({"APP_SIGNING_KEY"}))
    state.dynamic_secrets = 0
    state.mgmt_token = TOKEN
    state.stage = "app"
    return state


@pytest.fixture
def client(state: RuntimeState) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app_api(state), headers=AUTH)


def assert_error(result: Any, status: int, fragment: str = "") -> None:
    assert result.status_code == status, result.text
    body = result.json
    assert set(body) >= {"title", "description"}
    assert fragment in body["description"]
    assert "Traceback" not in result.text


# ------------------------------------------------------------------ authentication and readiness


def test_missing_or_non_bearer_authorization_is_401(state: RuntimeState) -> None:
    client = falcon.testing.TestClient(create_app_api(state))
    result = client.simulate_get("/v1/storage")
    assert_error(result, 401, "Bearer")
    assert result.headers["WWW-Authenticate"] == "Bearer"
    assert_error(
        client.simulate_get("/v1/storage", headers={"Authorization": f"Basic {TOKEN}"}), 401
    )
    assert_error(client.simulate_get("/v1/storage", headers={"Authorization": "Bearer"}), 401)


def test_wrong_token_is_403_and_stores_nothing(state: RuntimeState, backend: MemoryStorage) -> None:
    client = falcon.testing.TestClient(create_app_api(state))
    result = client.simulate_put(
        "/v1/storage/a", body=b"x", headers={"Authorization": "Bearer " + "cd" * 32}
    )
    assert_error(result, 403)
    assert backend.objects == {}


def test_503_until_boot_reaches_storage(
    state: RuntimeState, client: falcon.testing.TestClient
) -> None:
    state.storage, state.dynamic, state.stage = None, None, "static_secrets"
    assert_error(client.simulate_get("/v1/storage"), 503, "stage static_secrets")
    state.boot_error = "boot stage kms_key failed: key disabled"
    assert_error(client.simulate_get("/v1/secrets"), 503, "key disabled")
    state.mgmt_token = None  # before attestation there is no token to check yet
    assert_error(client.simulate_get("/v1/storage"), 503)


# ------------------------------------------------------------------ storage


def test_storage_round_trip_is_encrypted_at_rest(
    client: falcon.testing.TestClient, backend: MemoryStorage, state: RuntimeState
) -> None:
    put = client.simulate_put("/v1/storage/users/42/profile.json", body=b'{"n": "Ada"}')
    assert put.status_code == 201
    assert put.json == {"key": "users/42/profile.json", "status": "stored"}
    etag = put.headers["ETag"]
    assert etag == backend.get("users/42/profile.json").etag
    assert b"Ada" not in backend.objects["users/42/profile.json"]
    get = client.simulate_get("/v1/storage/users/42/profile.json")
    assert get.status_code == 200 and get.content == b'{"n": "Ada"}'
    assert get.headers["Content-Type"] == "application/octet-stream"
    assert get.headers["ETag"] == etag
    deleted = client.simulate_delete("/v1/storage/users/42/profile.json")
    assert deleted.json == {"key": "users/42/profile.json", "status": "deleted"}
    assert_error(client.simulate_get("/v1/storage/users/42/profile.json"), 404)
    assert_error(client.simulate_delete("/v1/storage/users/42/profile.json"), 404)
    counters = state.metrics.snapshot()
    assert (counters["storage_writes"], counters["storage_deletes"]) == (1, 2)
    assert counters["storage_reads"] == 2 and counters["storage_errors"] == 0


def test_if_match_flow(client: falcon.testing.TestClient) -> None:
    first = client.simulate_put("/v1/storage/c", body=b"1", headers={"If-None-Match": "*"})
    assert first.status_code == 201
    again = client.simulate_put("/v1/storage/c", body=b"x", headers={"If-None-Match": "*"})
    assert_error(again, 412)
    etag1 = first.headers["ETag"]
    second = client.simulate_put("/v1/storage/c", body=b"2", headers={"If-Match": etag1})
    assert second.status_code == 201 and second.headers["ETag"] != etag1
    stale = client.simulate_put("/v1/storage/c", body=b"3", headers={"If-Match": etag1})
    assert_error(stale, 412)
    assert client.simulate_get("/v1/storage/c").content == b"2"
    assert_error(
        client.simulate_put("/v1/storage/new", body=b"n", headers={"If-Match": etag1}), 412
    )
    assert_error(
        client.simulate_put("/v1/storage/c", body=b"n", headers={"If-None-Match": etag1}), 400
    )


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("/v1/storage/../escape", "'..'"),
        ("/v1/storage/a/../../b", "'..'"),
        ("/v1/storage/a%2F..%2Fb", "'..'"),
        ("/v1/storage//etc/passwd", "must not start with '/'"),
        ("/v1/storage/a%5Cb", "backslash"),
        ("/v1/storage/a%00b", "control"),
        ("/v1/storage/a%0Ab", "control"),
        ("/v1/storage/secrets/x", "reserved for dynamic secrets"),
        ("/v1/storage/a//b", "empty segments"),
        ("/v1/storage/" + "k" * 513, "1 to 512"),
    ],
)
def test_bad_keys_are_400_and_store_nothing(
    client: falcon.testing.TestClient, backend: MemoryStorage, path: str, rule: str
) -> None:
    assert_error(client.simulate_put(path, body=b"data"), 400, rule)
    assert_error(client.simulate_get(path), 400, rule)
    assert_error(client.simulate_delete(path), 400, rule)
    assert backend.objects == {}


def test_body_over_10_mib_is_413_and_stores_nothing(
    client: falcon.testing.TestClient, backend: MemoryStorage
) -> None:
    result = client.simulate_put("/v1/storage/big", body=b"x" * (MAX_STORAGE_BODY + 1))
    assert_error(result, 413, str(MAX_STORAGE_BODY))
    assert backend.objects == {}
    exact = client.simulate_put("/v1/storage/big", body=b"x" * MAX_STORAGE_BODY)
    assert exact.status_code == 201


class _ChunkedRequest:
    """Just enough of a Falcon request for read_body: no Content-Length, a chunked stream."""

    content_length = None

    def __init__(self, chunks: list[bytes]) -> None:
        self.stream = self._iterate(chunks)

    @staticmethod
    async def _iterate(chunks: list[bytes]) -> Any:
        for chunk in chunks:
            yield chunk


def test_body_limit_enforced_while_reading_without_content_length() -> None:
    async def read(chunks: list[bytes]) -> bytes:
        return await read_body(_ChunkedRequest(chunks), 10, "a thing")  # type: ignore[arg-type]

    assert asyncio.run(read([b"12345", b"67890"])) == b"1234567890"
    with pytest.raises(falcon.HTTPContentTooLarge):
        asyncio.run(read([b"12345", b"67890", b"1"]))


def test_list_by_prefix_hides_secret_records(client: falcon.testing.TestClient) -> None:
    for key in ("a/1", "a/2", "b/1"):
        client.simulate_put(f"/v1/storage/{key}", body=b"v")
    client.simulate_put("/v1/secrets/token", json={"value": "s3cr3t"})
    assert client.simulate_get("/v1/storage").json == {"keys": ["a/1", "a/2", "b/1"]}
    assert client.simulate_get("/v1/storage", params={"prefix": "a/"}).json == {
        "keys": ["a/1", "a/2"]
    }
    assert client.simulate_get("/v1/storage", params={"prefix": "secrets/"}).json == {"keys": []}


# ------------------------------------------------------------------ dynamic secrets


def test_secret_lifecycle_and_list_hides_values(
    client: falcon.testing.TestClient, backend: MemoryStorage, state: RuntimeState
) -> None:
    put = client.simulate_put(
        "/v1/secrets/api.token", json={"value": "s3cr3t-v", "env_var": "API_TOKEN"}
    )
    assert put.status_code == 201 and put.json == {"name": "api.token", "status": "stored"}
    client.simulate_put("/v1/secrets/other", json={"value": "hidden-2"})
    got = client.simulate_get("/v1/secrets/api.token").json
    assert (
        got["name"] == "api.token" and got["value"] == "s3cr3t-v" and got["env_var"] == "API_TOKEN"
    )
    assert {"created_at", "updated_at"} <= set(got)
    listed = client.simulate_get("/v1/secrets")
    assert "s3cr3t-v" not in listed.text and "hidden-2" not in listed.text
    assert [s["name"] for s in listed.json["secrets"]] == ["api.token", "other"]
    assert "env_var" not in listed.json["secrets"][1]
    assert all("value" not in s for s in listed.json["secrets"])
    assert all(b"s3cr3t" not in raw for raw in backend.objects.values())
    assert state.dynamic_secrets == 2
    # Replacing keeps created_at.
    client.simulate_put("/v1/secrets/api.token", json={"value": "v2", "env_var": "API_TOKEN"})
    again = client.simulate_get("/v1/secrets/api.token").json
    assert again["value"] == "v2" and again["created_at"] == got["created_at"]
    assert state.dynamic_secrets == 2
    assert client.simulate_delete("/v1/secrets/api.token").json == {
        "name": "api.token",
        "status": "deleted",
    }
    assert_error(client.simulate_get("/v1/secrets/api.token"), 404)
    assert_error(client.simulate_delete("/v1/secrets/api.token"), 404)
    assert state.dynamic_secrets == 1
    counters = state.metrics.snapshot()
    assert counters["secret_writes"] == 3 and counters["secret_deletes"] == 2


@pytest.mark.parametrize(
    ("name", "body", "status", "fragment"),
    [
        ("ok", b"{not json", 400, "not valid JSON"),
        ("ok", b'["value"]', 400, "JSON object"),
        ("ok", b"{}", 400, "value: Missing data for required field."),
        ("ok", b'{"value": 5}', 400, "value: Not a valid string."),
        ("ok", b'{"value": "v", "env_var": 7}', 400, "env_var: Not a valid string."),
        ("ok", b'{"value": "v", "extra": 1}', 400, "extra: Unknown field."),
        ("ok", b'{"value": "v", "env_var": "APP_SIGNING_KEY"}', 400, "static secret"),
        ("ok", b'{"value": "v", "env_var": "ENCLAVE_MGMT_TOKEN"}', 400, "env_var: invalid"),
        ("ok", b'{"value": "v", "env_var": "1BAD"}', 400, "env_var: invalid env_var"),
        ("ok", b'{"value": "v", "env_var": "OK\\n"}', 400, "env_var: invalid env_var"),
        ("a..b", b'{"value": "v"}', 400, "name: invalid secret name"),
        ("ok%0A", b'{"value": "v"}', 400, "invalid secret name"),
        ("-lead", b'{"value": "v"}', 400, "invalid secret name"),
        ("n" * 129, b'{"value": "v"}', 400, "invalid secret name"),
    ],
)
def test_bad_secret_requests_change_nothing(
    client: falcon.testing.TestClient,
    backend: MemoryStorage,
    name: str,
    body: bytes,
    status: int,
    fragment: str,
) -> None:
    assert_error(client.simulate_put(f"/v1/secrets/{name}", body=body), status, fragment)
    assert backend.objects == {}


def test_secret_body_over_64_kib_is_413(
    client: falcon.testing.TestClient, backend: MemoryStorage
) -> None:
    body = json.dumps({"value": "x" * MAX_JSON_BODY}).encode()
    assert_error(client.simulate_put("/v1/secrets/big", body=body), 413)
    assert backend.objects == {}


def test_env_var_used_by_another_dynamic_secret_is_400(client: falcon.testing.TestClient) -> None:
    client.simulate_put("/v1/secrets/one", json={"value": "1", "env_var": "SHARED"})
    assert_error(
        client.simulate_put("/v1/secrets/two", json={"value": "2", "env_var": "SHARED"}),
        400,
        "'one'",
    )
    # The owner itself may keep it.
    assert (
        client.simulate_put(
            "/v1/secrets/one", json={"value": "1b", "env_var": "SHARED"}
        ).status_code
        == 201
    )


# ------------------------------------------------------------------ PCRs


def test_extend_pcr_value_is_sha384_of_old_and_data(
    client: falcon.testing.TestClient, memory_nsm: MemoryNsm
) -> None:
    old = memory_nsm.pcrs[16]
    result = client.simulate_post(
        "/v1/extend-pcr", json={"pcr": 16, "data": base64.b64encode(b"measurement").decode()}
    )
    assert result.status_code == 200
    expected = hashlib.sha384(old + b"measurement").hexdigest()
    assert result.json == {"pcr": 16, "status": "extended", "value": expected}
    assert memory_nsm.pcrs[16].hex() == expected


def test_lock_pcr_then_extend_is_409_with_nsm_code(
    client: falcon.testing.TestClient, memory_nsm: MemoryNsm
) -> None:
    assert client.simulate_post("/v1/lock-pcr", json={"pcr": 31}).json == {
        "pcr": 31,
        "status": "locked",
    }
    before = memory_nsm.pcrs[31]
    result = client.simulate_post("/v1/extend-pcr", json={"pcr": 31, "data": "AAAA"})
    assert_error(result, 409, "ReadOnlyIndex")
    assert memory_nsm.pcrs[31] == before
    assert_error(client.simulate_post("/v1/lock-pcr", json={"pcr": 31}), 409, "ReadOnlyIndex")


@pytest.mark.parametrize(
    "body",
    [
        {"pcr": 15, "data": "AAAA"},
        {"pcr": 32, "data": "AAAA"},
        {"pcr": True, "data": "AAAA"},
        {"pcr": "16", "data": "AAAA"},
        {"pcr": 16, "data": "not base64!"},
        {"pcr": 16, "data": 5},
        {"pcr": 16},
    ],
)
def test_bad_pcr_requests_are_400(
    client: falcon.testing.TestClient, memory_nsm: MemoryNsm, body: dict[str, Any]
) -> None:
    before = list(memory_nsm.pcrs)
    assert_error(client.simulate_post("/v1/extend-pcr", json=body), 400)
    assert memory_nsm.pcrs == before
    assert_error(client.simulate_post("/v1/lock-pcr", json={"pcr": 0}), 400, "16 to 31")


# ------------------------------------------------------------------ error shape


def test_framework_errors_are_json_title_and_description(client: falcon.testing.TestClient) -> None:
    assert_error(client.simulate_get("/v1/nothing-here"), 404)
    assert_error(client.simulate_post("/v1/storage/a"), 405)


def test_unexpected_exception_is_500_json_without_traceback(
    client: falcon.testing.TestClient, backend: MemoryStorage
) -> None:
    def broken(key: str) -> Any:
        raise RuntimeError("disk on fire at /secret/path")

    backend.get = broken  # type: ignore[method-assign]
    result = client.simulate_get("/v1/storage/a")
    assert_error(result, 500)
    assert result.json["title"] == "Internal error"
    assert "disk on fire" not in result.text


def test_tampered_object_is_an_error_not_wrong_data(
    client: falcon.testing.TestClient, backend: MemoryStorage, state: RuntimeState
) -> None:
    client.simulate_put("/v1/storage/x", body=b"mine")
    client.simulate_put("/v1/storage/y", body=b"theirs")
    backend.objects["y"] = backend.objects["x"]
    result = client.simulate_get("/v1/storage/y")
    assert_error(result, 500, "'y'")
    assert b"mine" not in result.content
    assert state.metrics.snapshot()["storage_errors"] == 1
