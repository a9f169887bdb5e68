"""The management API through falcon's ASGI test client, with a fake launcher and runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from loguru import logger

from enclave_core import __version__
from enclave_core.config import Config
from enclave_core.image.current import measure_new_image
from enclave_core.metrics import COUNTERS
from enclave_core.supervisor.api import create_app
from enclave_core.supervisor.migration.service import MigrationService
from enclave_core.supervisor.runtime_client import Probe, RuntimeUnavailable
from enclave_core.supervisor.watchdog import Watchdog
from tests.enclave_core.supervisor.test_watchdog import SPEC, FakeLauncher

TOKEN = "ab" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Api:
    """The app under test and the fakes behind it."""

    def __init__(self, config: Config) -> None:
        self.launcher = FakeLauncher()
        self.probe = Probe(True, "ready")
        self.runtime_up = True
        self.runtime_raises: Exception | None = None
        self.watchdog = Watchdog(
            self.launcher,
            SPEC,
            lambda: self.probe,
            config.supervisor.watchdog,
        )
        app = create_app(
            watchdog=self.watchdog, runtime_info=self.runtime_info, config=config, token=TOKEN
        )
        self.client = falcon.testing.TestClient(app)

    def runtime_info(self) -> dict[str, Any]:
        if self.runtime_raises is not None:
            raise self.runtime_raises
        if not self.runtime_up:
            raise RuntimeUnavailable("runtime enclave-info at tcp://127.0.0.1:1 is not reachable")
        metrics = dict.fromkeys(COUNTERS, 0)
        metrics["http_requests"] = 5
        return {"name": "hello", "pcr0": "00" * 48, "metrics": metrics}

    def boot_ready(self) -> None:
        asyncio.run(self.watchdog.boot())
        asyncio.run(self.watchdog.tick())  # one ready probe: running


@pytest.fixture
def api(make_config: Callable[..., Config]) -> Api:
    return Api(make_config(instance_type="m6i.large"))


def assert_error(result: Any, status: int) -> dict[str, Any]:
    assert result.status_code == status, result.text
    assert result.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = result.json
    assert set(body) == {"title", "description"} and body["description"]
    assert "Traceback" not in result.text
    return body


def test_health_reports_starting_then_running(api: Api) -> None:
    asyncio.run(api.watchdog.boot())
    api.probe = Probe(False, "initializing", "kms_key")
    result = api.client.simulate_get("/health")
    assert result.status_code == 503 and result.json["status"] == "starting"
    assert result.json["runtime"] == {"status": "initializing", "detail": "kms_key"}
    api.probe = Probe(True, "ready")  # /health probes the runtime itself: no tick needed
    result = api.client.simulate_get("/health")
    assert result.status_code == 200
    body = result.json
    assert body["status"] == "running" and body["restarts"] == 0 and body["last_exit"] is None
    assert body["enclave_id"] == api.launcher.desc.enclave_id  # type: ignore[union-attr]
    assert body["enclave_cid"] == 16 and body["state"] == "RUNNING"


def test_health_is_error_when_the_launcher_fails(api: Api) -> None:
    api.launcher.fail_start = "cannot start enclave 'hello': nitro-cli: not found"
    asyncio.run(api.watchdog.boot())
    result = api.client.simulate_get("/health")
    assert result.status_code == 503
    assert result.json["status"] == "error" and "nitro-cli" in result.json["error"]


def test_stop_and_start_need_the_token(api: Api) -> None:
    api.boot_ready()
    for path in ("/v1/stop", "/v1/start"):
        body = assert_error(api.client.simulate_post(path), 401)
        assert "Bearer" in body["description"]
        assert api.client.simulate_post(path).headers["www-authenticate"] == "Bearer"
        assert_error(api.client.simulate_post(path, headers={"Authorization": "Basic abc"}), 401)
        assert_error(
            api.client.simulate_post(path, headers={"Authorization": "Bearer " + "cd" * 32}), 403
        )
    assert api.launcher.running and api.launcher.stops == 0  # nothing changed


def test_stop_then_start_with_conflicts(api: Api) -> None:
    api.boot_ready()
    assert_error(api.client.simulate_post("/v1/start", headers=AUTH), 409)
    result = api.client.simulate_post("/v1/stop", headers=AUTH)
    assert result.status_code == 200 and result.json["status"] == "stopped"
    assert not api.launcher.running
    body = assert_error(api.client.simulate_post("/v1/stop", headers=AUTH), 409)
    assert body == {"title": "Conflict", "description": "the enclave is already stopped"}
    health = api.client.simulate_get("/health")
    assert health.status_code == 503 and health.json["status"] == "stopped"
    assert health.json["last_exit"]["reason"].startswith("stopped by the supervisor")
    api.probe = Probe(False, "unreachable", "connection refused")
    result = api.client.simulate_post("/v1/start", headers=AUTH)
    assert result.status_code == 200 and result.json["status"] == "starting"
    assert api.launcher.starts == 2


def test_start_reports_a_launcher_failure(api: Api) -> None:
    api.boot_ready()
    api.client.simulate_post("/v1/stop", headers=AUTH)
    api.launcher.fail_start = "cannot start enclave 'hello': boom"
    body = assert_error(api.client.simulate_post("/v1/start", headers=AUTH), 500)
    assert body == {"title": "Launcher error", "description": "cannot start enclave 'hello': boom"}


def test_enclave_info_adds_the_host_block(api: Api) -> None:
    api.boot_ready()
    result = api.client.simulate_get("/v1/enclave-info")
    assert result.status_code == 200
    info = result.json
    assert info["name"] == "hello" and info["metrics"]["http_requests"] == 5
    assert info["host"] == {
        "instance_type": "m6i.large",
        "enclave_id": api.launcher.desc.enclave_id,  # type: ignore[union-attr]
        "enclave_cid": 16,
        "cpu_count": 2,
        "memory_mib": 512,
        "restarts": 0,
        "supervisor_version": __version__,
    }


def test_enclave_info_is_503_when_the_runtime_is_down(api: Api) -> None:
    api.runtime_up = False
    body = assert_error(api.client.simulate_get("/v1/enclave-info"), 503)
    assert body["title"] == "Runtime unavailable" and "not reachable" in body["description"]


def test_metrics_exposition(api: Api) -> None:
    api.boot_ready()
    api.client.simulate_get("/health")
    api.client.simulate_get("/no/such/path")
    result = api.client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = result.text.splitlines()
    assert "enclave_up 1.0" in lines
    assert "enclave_restarts_total 0.0" in lines
    assert "enclave_http_requests_total 5.0" in lines
    assert "enclave_storage_errors_total 0.0" in lines
    assert "# TYPE enclave_kms_operations_total counter" in lines
    assert (
        'enclave_supervisor_requests_total{method="GET",path="/health",status="200"} 1.0' in lines
    )
    assert (
        'enclave_supervisor_requests_total{method="GET",path="unmatched",status="404"} 1.0' in lines
    )
    assert any(
        line.startswith(
            'enclave_supervisor_request_duration_seconds_count{method="GET",path="/health"}'
        )
        for line in lines
    )


def test_metrics_without_a_runtime(api: Api) -> None:
    api.runtime_up = False
    lines = api.client.simulate_get("/metrics").text.splitlines()
    assert "enclave_up 0.0" in lines
    assert not any(line.startswith("enclave_http_requests_total") for line in lines)


def test_errors_are_json_and_unexpected_ones_hide_details(api: Api) -> None:
    body = assert_error(api.client.simulate_get("/nope"), 404)
    assert body["title"] == "404 Not Found"
    assert_error(api.client.simulate_delete("/v1/stop", headers=AUTH), 405)
    api.runtime_raises = RuntimeError("internal detail")
    body = assert_error(api.client.simulate_get("/v1/enclave-info"), 500)
    assert "internal detail" not in body["description"]


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    found: list[dict[str, Any]] = []
    sink = logger.add(lambda message: found.append(dict(message.record)), level="INFO")
    yield found
    logger.remove(sink)


def test_every_request_is_logged(api: Api, records: list[dict[str, Any]]) -> None:
    api.client.simulate_post("/v1/stop", headers={"Authorization": "Bearer " + TOKEN[::-1]})
    logged = [r["extra"] for r in records if r["message"] == "request"]
    assert len(logged) == 1
    entry = logged[0]
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/v1/stop", 403)
    assert isinstance(entry["duration_ms"], float)
    assert TOKEN not in str(records) and TOKEN[::-1] not in str(records)


def migration_app(config: Config, measure: Callable[..., str]) -> falcon.testing.TestClient:
    """The API with a migration service whose image measurement is ``measure``."""
    service = MigrationService(
        config, backends=lambda: (None, None), enclave_factory=dict, measure=measure
    )
    app = create_app(
        watchdog=None,  # type: ignore[arg-type]
        runtime_info=dict,
        config=config,
        token=TOKEN,
        migration=service,
    )
    return falcon.testing.TestClient(app, headers=AUTH)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "exactly one of 'eif' and 'app_dir'"),
        ({"eif": "/a.eif", "app_dir": "/app"}, "exactly one of 'eif' and 'app_dir'"),
        ({"app_dir": "relative"}, "app_dir: must be an absolute path"),
        ({"app_dir": ""}, "app_dir: must be an absolute path"),
        ({"app_dir": "/a\u0000b"}, "app_dir: must not hold control characters"),
        ({"eif": "/new.eif\n"}, "eif: must not hold control characters"),
        ({"app_dir": None}, "app_dir: Field may not be null."),
        ({"app_dir": "/app", "pcr0": "00"}, "pcr0: must be 96 hex characters"),
        ({"app_dir": "/app", "pcr0": "0" * 96 + "\n"}, "pcr0: must be 96 hex characters"),
        ({"app_dir": "/app", "color": "red"}, "color: Unknown field."),
        (["app_dir"], "the body must be a JSON object"),
    ],
)
def test_migrate_bodies_are_validated_naming_the_field(
    make_config: Callable[..., Config], body: Any, fragment: str
) -> None:
    def measure(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("a refused request must not measure anything")

    result = migration_app(make_config(), measure).simulate_post("/v1/migrate", json=body)
    assert fragment in assert_error(result, 400)["description"]


def test_an_unreadable_new_image_is_400_not_500(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    def measure(*args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied", "/app/secret.bin")

    new_image = tmp_path / "new"
    new_image.mkdir()
    client = migration_app(make_config(), measure)
    result = client.simulate_post("/v1/migrate", json={"app_dir": str(new_image)})
    body = assert_error(result, 400)
    assert body["description"] == (
        "the new image cannot be read: Permission denied (/app/secret.bin)"
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"days": 3}, "days: must be a whole number from 7 to 30"),
        ({"days": "7"}, "days: must be a whole number from 7 to 30"),
        ({"days": True}, "days: must be a whole number from 7 to 30"),
        ({"days": 7, "key": "k"}, "key: Unknown field."),
    ],
)
def test_schedule_key_deletion_bodies_are_validated(
    make_config: Callable[..., Config], body: Any, fragment: str
) -> None:
    client = migration_app(make_config(), measure_new_image)
    result = client.simulate_post("/v1/schedule-key-deletion", json=body)
    assert fragment in assert_error(result, 400)["description"]
