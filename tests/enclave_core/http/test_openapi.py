"""The OpenAPI documents: committed copies current, valid, complete, served, and truthful.

The documents served by real listeners over sockets are compared with the committed ones in
tests/e2e/test_openapi_e2e.py; here the Falcon apps are driven in process.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon.inspect
import falcon.testing
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from openapi_spec_validator import validate as validate_spec

from enclave_core import __version__
from enclave_core.cli.apidocs import REGENERATE, documents, main, stale_documents
from enclave_core.config import Config
from enclave_core.crypto.envelope import EncryptedStorage
from enclave_core.http.openapi import dumps
from enclave_core.http.schemas import describe_errors
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.protocol.signing import (
    NONCE_HEADER,
    PUBKEY_HEADER,
    SIGNATURE_HEADER,
    verify_response_signature,
)
from enclave_core.runtime.apidoc import app_document, control_document, public_document
from enclave_core.runtime.appapi import create_app_api
from enclave_core.runtime.dynsecrets import DynamicSecrets
from enclave_core.runtime.instrumented import CountingStorage
from enclave_core.runtime.own_routes import create_control_app, create_public_app
from enclave_core.runtime.state import RuntimeState
from enclave_core.supervisor.api import create_app
from enclave_core.supervisor.apidoc import supervisor_document
from enclave_core.supervisor.runtime_client import Probe, RuntimeUnavailable
from enclave_core.supervisor.watchdog import Watchdog
from tests.doubles.memory_backends import DOUBLES_CONFIG, MemoryNsm, MemoryStorage
from tests.enclave_core.http.openapi_conformance import check_answer
from tests.enclave_core.supervisor.migration.migration_world import STATIC, World, boot
from tests.enclave_core.supervisor.test_watchdog import SPEC, FakeLauncher
from tests.helpers import REPO_ROOT

DOCS = REPO_ROOT / "docs" / "api"
TOKEN = "ab" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def state(make_config: Callable[..., Config]) -> RuntimeState:
    """A booted runtime's state over in-memory backends."""
    state = RuntimeState(make_config(**DOUBLES_CONFIG))
    storage = CountingStorage(EncryptedStorage(MemoryStorage(), bytes(32)), state.metrics)
    state.attestation = MemoryNsm()
    state.signing_key = Ed25519PrivateKey.generate()
    state.storage = storage
    state.dynamic = DynamicSecrets(storage, state.metrics, frozenset({"APP_SIGNING_KEY"}))
    state.dynamic_secrets = 0
    state.mgmt_token = TOKEN
    return state


def supervisor_app(config: Config, runtime_info: Callable[[], dict[str, Any]] = dict) -> Any:
    """The management API over a fake launcher whose runtime answers ready."""
    probe = Probe(True, "ready")
    watchdog = Watchdog(FakeLauncher(), SPEC, lambda: probe, config.supervisor.watchdog)
    asyncio.run(watchdog.boot())
    return create_app(watchdog=watchdog, runtime_info=runtime_info, config=config, token=TOKEN)


# ------------------------------------------------------------------ the documents themselves


def test_committed_documents_are_current() -> None:
    stale = stale_documents(DOCS)
    assert not stale, f"docs/api is stale ({', '.join(stale)}); regenerate with: {REGENERATE}"


@pytest.mark.parametrize("name", sorted(documents()))
def test_each_document_is_valid_openapi_3(name: str) -> None:
    document = json.loads((DOCS / name).read_text(encoding="utf-8"))
    validate_spec(document)
    assert document["openapi"].startswith("3.")
    assert document["info"]["version"] == __version__


def test_committed_form_is_sorted_indented_and_ends_with_a_newline() -> None:
    text = (DOCS / "supervisor.json").read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.startswith('{\n  "components"')
    assert dumps(json.loads(text)) == text


def test_regenerate_and_check_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--check", str(tmp_path)]) == 1
    assert REGENERATE in capsys.readouterr().out
    assert main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(documents())
    assert main(["--check", str(tmp_path)]) == 0
    (tmp_path / "runtime-app.json").write_text("{}\n")
    assert main(["--check", str(tmp_path)]) == 1


def _routes(app: Any) -> set[tuple[str, str]]:
    """(path template, method) of every responder the app defines itself."""
    found = set()
    for route in falcon.inspect.inspect_app(app).routes:
        template = route.path.replace(":path}", "}")
        for method in route.methods:
            if not method.internal:
                found.add((template, method.method.lower()))
    return found


def _documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item}


def test_every_route_of_every_app_is_documented_and_nothing_more(
    state: RuntimeState, make_config: Callable[..., Config]
) -> None:
    pairs = [
        (create_public_app(state), public_document()),
        (create_control_app(state), control_document()),
        (create_app_api(state), app_document()),
        (supervisor_app(make_config()), supervisor_document(False)),
    ]
    for app, document in pairs:
        assert _routes(app) == _documented(document), document["info"]["title"]


def test_migration_routes_are_documented_when_served() -> None:
    full = _documented(supervisor_document())
    assert full - _documented(supervisor_document(False)) == {
        ("/v1/migrate", "get"),
        ("/v1/migrate", "post"),
        ("/v1/schedule-key-deletion", "post"),
    }


def test_request_schemas_reject_unknown_fields() -> None:
    schemas = app_document()["components"]["schemas"]
    for name in ("SecretWrite", "ExtendPcr", "LockPcr"):
        assert schemas[name]["additionalProperties"] is False
    assert supervisor_document()["components"]["schemas"]["MigrateRequest"]["oneOf"]


def test_errors_name_fields_by_dotted_path() -> None:
    messages = {"host": {"cpu": ["Not a valid integer."]}, "_schema": ["bad"], "a": {0: ["x"]}}
    assert describe_errors(messages) == ["bad", "a.0: x", "host.cpu: Not a valid integer."]


# ------------------------------------------------------------------ served by each app


def test_public_listener_serves_its_document_signed(state: RuntimeState) -> None:
    client = falcon.testing.TestClient(create_public_app(state))
    result = client.simulate_get("/openapi.json", headers={NONCE_HEADER: "n1"})
    assert result.status_code == 200 and result.json == public_document()
    verify_response_signature(
        result.headers[PUBKEY_HEADER],
        result.headers[SIGNATURE_HEADER],
        "GET",
        "/openapi.json",
        200,
        result.content,
        "n1",
    )


def test_control_listener_serves_its_document(state: RuntimeState) -> None:
    result = falcon.testing.TestClient(create_control_app(state)).simulate_get("/openapi.json")
    assert result.status_code == 200 and result.json == control_document()


def test_app_api_serves_its_document_behind_the_token(state: RuntimeState) -> None:
    client = falcon.testing.TestClient(create_app_api(state))
    assert client.simulate_get("/openapi.json").status_code == 401
    wrong = client.simulate_get("/openapi.json", headers={"Authorization": "Bearer " + "cd" * 32})
    assert wrong.status_code == 403
    state.storage = state.dynamic = None  # still booting: the document needs no storage
    result = client.simulate_get("/openapi.json", headers=AUTH)
    assert result.status_code == 200 and result.json == app_document()
    assert client.simulate_get("/v1/storage", headers=AUTH).status_code == 503


def test_supervisor_serves_its_document(make_config: Callable[..., Config]) -> None:
    result = falcon.testing.TestClient(supervisor_app(make_config())).simulate_get("/openapi.json")
    assert result.status_code == 200 and result.json == supervisor_document(False)


# ------------------------------------------------------------------ answers match the documents


class Walk:
    """Sends requests to one app and checks each answer against its document."""

    def __init__(self, app: Any, document: dict[str, Any], headers: dict[str, str]) -> None:
        self.client = falcon.testing.TestClient(app, headers=headers)
        self.document = document
        self.statuses: set[tuple[str, str, int]] = set()

    def __call__(self, method: str, path: str, expected: int, **kwargs: Any) -> Any:
        result = self.client.simulate_request(method, path, **kwargs)
        assert result.status_code == expected, (method, path, result.text)
        check_answer(
            self.document,
            method,
            path,
            result.status_code,
            dict(result.headers),
            result.content,
        )
        self.statuses.add((method, path.split("?")[0], result.status_code))
        return result


def test_app_api_answers_conform(state: RuntimeState) -> None:
    walk = Walk(create_app_api(state), app_document(), AUTH)
    walk("PUT", "/v1/storage/a/b.txt", 201, body=b"\x00bytes")
    walk("PUT", "/v1/storage/a/b.txt", 412, body=b"x", headers={"If-None-Match": "*"})
    walk("PUT", "/v1/storage/a/b.txt", 400, body=b"x", headers={"If-None-Match": "etag"})
    walk("PUT", "/v1/storage/a/../b", 400, body=b"x")
    walk("PUT", "/v1/storage/big", 413, body=b"x" * (10 * 1024 * 1024 + 1))
    walk("GET", "/v1/storage/a/b.txt", 200)
    walk("GET", "/v1/storage?prefix=a/", 200)
    walk("GET", "/v1/storage?prefix=/a", 400)
    walk("DELETE", "/v1/storage/a/b.txt", 200)
    walk("DELETE", "/v1/storage/a/b.txt", 404)
    walk("GET", "/v1/storage/a/b.txt", 404)
    walk("PUT", "/v1/secrets/s1", 201, json={"value": "v", "env_var": "S1"})
    walk("PUT", "/v1/secrets/s2", 201, json={"value": "v"})
    walk("PUT", "/v1/secrets/s1", 400, json={"value": "v", "nope": 1})
    walk("PUT", "/v1/secrets/s1", 400, body=b"{")
    walk("GET", "/v1/secrets/s1", 200)
    walk("GET", "/v1/secrets", 200)
    walk("DELETE", "/v1/secrets/s1", 200)
    walk("GET", "/v1/secrets/s1", 404)
    data = base64.b64encode(b"m").decode()
    walk("POST", "/v1/extend-pcr", 200, json={"pcr": 16, "data": data})
    walk("POST", "/v1/extend-pcr", 400, json={"pcr": 16, "data": "###"})
    walk("POST", "/v1/lock-pcr", 200, json={"pcr": 17})
    locked = walk("POST", "/v1/extend-pcr", 409, json={"pcr": 17, "data": data})
    assert locked.json["code"] == "ReadOnlyIndex"
    walk("GET", "/v1/storage", 401, headers={"Authorization": ""})
    walk("GET", "/openapi.json", 200)


def test_public_and_control_answers_conform(state: RuntimeState) -> None:
    public = Walk(create_public_app(state), public_document(), {})
    public("GET", "/health", 503)
    public("GET", "/health", 400, headers={NONCE_HEADER: "no spaces"})
    public("GET", "/v1/enclave-info", 200)
    public("GET", "/enclave/attestation?nonce=00ff", 200)
    public("GET", "/enclave/attestation?nonce=0", 400)
    public("POST", "/v1/export-key", 404)
    control = Walk(create_control_app(state), control_document(), {})
    control("GET", "/health", 503)
    control("POST", "/v1/export-key", 400, body=b'{"key_id": "mine"}')
    control("POST", "/v1/export-key", 413, body=b"{" + b" " * 2000 + b"}")
    state.stage, state.app_up = "app", True
    public("GET", "/health", 200)
    control("GET", "/health", 200)
    state.attestation = None
    public("GET", "/enclave/attestation?nonce=00", 503)


def test_supervisor_answers_conform(
    make_config: Callable[..., Config], state: RuntimeState
) -> None:
    runtime_up = True

    def runtime_info() -> dict[str, Any]:
        if not runtime_up:
            raise RuntimeUnavailable("runtime enclave-info at tcp://127.0.0.1:1 is not reachable")
        return state.enclave_info()

    walk = Walk(supervisor_app(make_config(), runtime_info), supervisor_document(False), {})
    walk("GET", "/health", 200)
    walk("GET", "/v1/enclave-info", 200)
    walk("GET", "/metrics", 200)
    walk("POST", "/v1/start", 401)
    walk("POST", "/v1/start", 403, headers={"Authorization": "Bearer wrong"})
    walk("POST", "/v1/start", 409, headers=AUTH)
    walk("POST", "/v1/stop", 200, headers=AUTH)
    walk("POST", "/v1/stop", 409, headers=AUTH)
    walk("GET", "/health", 503)
    runtime_up = False
    walk("GET", "/v1/enclave-info", 503)
    walk("GET", "/metrics", 200)
    walk("POST", "/v1/start", 200, headers=AUTH)
    walk("GET", "/openapi.json", 200)


@pytest.fixture
def world(tmp_path: Path, make_config: Callable[..., Config]) -> World:
    """A booted development enclave (local backends) and the folder of its next version."""
    old_dir, new_dir = tmp_path / "app", tmp_path / "app-v2"
    for folder, version in ((old_dir, 1), (new_dir, 2)):
        folder.mkdir()
        (folder / "app.py").write_text(f"print('version {version}')\n")
    config = make_config(old_dir, secrets=STATIC)
    plugins = get_plugin_manager()
    old = boot(config, plugins)
    assert old.kms_key_id is not None
    return World(config, plugins, new_dir, old, old.kms_key_id)


def test_migration_answers_conform(world: World) -> None:
    """A whole migration through the API: every answer is one the document describes."""
    service = world.service(world.enclave())
    app = create_app(
        watchdog=None,  # type: ignore[arg-type]
        runtime_info=dict,
        config=world.config,
        token=TOKEN,
        migration=service,
    )
    document = supervisor_document()
    body = json.dumps({"app_dir": str(world.new_dir)}).encode()

    async def scenario() -> list[tuple[str, str, int, Any]]:
        answers = []
        async with falcon.testing.ASGIConductor(app, headers=AUTH) as api:
            answers.append(("GET", "/v1/migrate", 200, await api.simulate_get("/v1/migrate")))
            answers.append(
                ("POST", "/v1/migrate", 202, await api.simulate_post("/v1/migrate", body=body))
            )
            await service.wait()
            answers.append(("GET", "/v1/migrate", 200, await api.simulate_get("/v1/migrate")))
            answers.append(
                ("POST", "/v1/migrate", 200, await api.simulate_post("/v1/migrate", body=body))
            )
            deletion = await api.simulate_post("/v1/schedule-key-deletion", body=b"")
            answers.append(("POST", "/v1/schedule-key-deletion", 200, deletion))
            again = await api.simulate_post("/v1/schedule-key-deletion", json={"days": 30})
            answers.append(("POST", "/v1/schedule-key-deletion", 409, again))
        return answers

    answers = asyncio.run(scenario())
    for method, path, expected, result in answers:
        assert result.status_code == expected, (method, path, result.text)
        check_answer(
            document, method, path, result.status_code, dict(result.headers), result.content
        )
    assert answers[0][3].json["status"] == "none"
    assert answers[2][3].json["status"] == "done" and answers[2][3].json["steps"]
    assert answers[4][3].json["state"] == "PendingDeletion"
