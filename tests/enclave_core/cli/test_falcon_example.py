"""The Falcon template (`enclave init --template falcon`): its app and its gunicorn settings.

The app runs in falcon.testing against the runtime's real app API (tests/doubles/appapi_server.py);
gunicorn.conf.py is read as gunicorn reads it. tests/e2e/test_falcon_e2e.py runs the whole of it
under `enclave dev`.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import logging
import runpy
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import falcon
import falcon.testing
import pytest

from enclave_core.cli.main import main
from enclave_core.config import Config, load_config
from enclave_core.deploy.build import app_image_files
from enclave_core.deploy.context import dockerfile_text
from enclave_core.deploy.lock import lock_problems, requirements_sha256
from enclave_core.runtime.child import AppSupervisor
from enclave_core.supervisor.service import STOP_TIMEOUT_S
from tests.doubles.appapi_server import TOKEN, AppApi, app_api_servers
from tests.doubles.locked import fake_lock

FALCON = Path(__file__).resolve().parents[3] / "enclave_core" / "templates" / "falcon"
SECRET = "0123456789abcdef" * 4


def load_app_module(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> ModuleType:
    """Import the template's app.py with ``env`` (it makes its client on import, as in gunicorn)."""
    for name in ("ENCLAVE_API_URL", "ENCLAVE_MGMT_TOKEN", "APP_SIGNING_KEY", "GREETING"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("falcon_template_app", FALCON / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def app_api(make_config: Callable[..., Config]) -> Iterator[AppApi]:
    with app_api_servers(make_config) as start:
        yield start()


@pytest.fixture
def web(app_api: AppApi, monkeypatch: pytest.MonkeyPatch) -> falcon.testing.TestClient:
    module = load_app_module(monkeypatch, {**app_api.env(), "APP_SIGNING_KEY": SECRET})
    return falcon.testing.TestClient(module.app)


def test_greeting_health_and_the_secret_without_its_value(
    web: falcon.testing.TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert web.simulate_get("/").text == "Hello from Simple Enclave and Falcon!\n"
    monkeypatch.setenv("GREETING", "Bonjour")
    assert web.simulate_get("/").text == "Bonjour\n"
    assert web.simulate_get("/health").text == "ok\n"
    secret = web.simulate_get("/secret")
    assert secret.json == {"secret_present": True, "length": 64}
    assert SECRET not in secret.text


def test_notes_round_trip_with_etags(web: falcon.testing.TestClient, app_api: AppApi) -> None:
    assert web.simulate_get("/notes").json == {"notes": []}
    assert web.simulate_get("/notes/first").status_code == 404
    created = web.simulate_put("/notes/first", body=b"v1", headers={"If-None-Match": "*"})
    assert created.status_code == 201 and created.json == {"name": "first", "status": "stored"}
    etag = created.headers["ETag"]
    again = web.simulate_put("/notes/first", body=b"x", headers={"If-None-Match": "*"})
    assert again.status_code == 412
    got = web.simulate_get("/notes/first")
    assert (got.status_code, got.content, got.headers["ETag"]) == (200, b"v1", etag)
    updated = web.simulate_put("/notes/first", body=b"v2", headers={"If-Match": etag})
    assert updated.status_code == 201 and updated.headers["ETag"] != etag
    stale = web.simulate_put("/notes/first", body=b"v3", headers={"If-Match": etag})
    assert stale.status_code == 412 and stale.json["title"] == "412 Precondition Failed"
    assert web.simulate_get("/notes/first").content == b"v2"
    assert app_api.client().get("notes/first").data == b"v2"  # really in the enclave's storage
    web.simulate_put("/notes/my note", body=b"spaces")
    assert web.simulate_get("/notes").json == {"notes": ["first", "my note"]}
    assert web.simulate_delete("/notes/first").status_code == 204
    assert web.simulate_delete("/notes/first").status_code == 404
    assert web.simulate_get("/notes").json == {"notes": ["my note"]}


def test_app_api_refusals_become_the_apps_answers(
    web: falcon.testing.TestClient, app_api: AppApi, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = web.simulate_put("/notes/..", body=b"x")
    assert bad.status_code == 400 and "'..'" in bad.json["description"]
    big = web.simulate_put("/notes/big", body=b"x" * (1024 * 1024 + 1))
    assert big.status_code == 413
    app_api.state.mgmt_token = "ab" * 32  # the app's token no longer works (403): not the client's
    refused = web.simulate_get("/notes")
    assert refused.status_code == 502
    assert "403" in capsys.readouterr().err  # the app logs what happened...
    assert TOKEN not in refused.text  # ...and answers no detail
    app_api.state.mgmt_token = TOKEN
    app_api.state.storage = None  # booting again: 503, with Retry-After
    unavailable = web.simulate_get("/notes/first")
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "1"


def test_without_the_app_api_the_notes_are_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    web = falcon.testing.TestClient(load_app_module(monkeypatch, {}).app)
    assert web.simulate_get("/").status_code == 200
    assert web.simulate_get("/secret").json == {"secret_present": False, "length": 0}
    answer = web.simulate_get("/notes")
    assert answer.status_code == 503 and "enclave dev" in answer.json["description"]


def test_enclave_build_locks_its_requirements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "notes"), "--template", "falcon"]) == 0
    capsys.readouterr()
    config = load_config(tmp_path / "notes" / "enclave.yaml")
    files = [relative for relative, _ in app_image_files(config)]
    assert {"app.py", "gunicorn.conf.py", "requirements.txt"} <= set(files)
    # The lock is made for this requirements.txt; editing it makes the lock stale.
    lock = fake_lock(config)
    assert lock.requirements_sha256 == requirements_sha256(config) is not None
    dockerfile = dockerfile_text(config, lock)
    assert "--require-hashes" in dockerfile and "-r /app/requirements.txt" not in dockerfile
    assert '["python3", "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"]' in dockerfile
    (tmp_path / "notes" / "requirements.txt").write_text("falcon==4.0.2\n")
    assert any("another requirements.txt" in p for p in lock_problems(config, lock))


# -- gunicorn.conf.py ----------------------------------------------------------------------------
def gunicorn_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name in ("PORT", "ENCLAVE_CPU_COUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(FALCON / "gunicorn.conf.py"))


def test_gunicorn_binds_loopback_port_with_a_worker_per_enclave_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = gunicorn_settings(monkeypatch, PORT="7999", ENCLAVE_CPU_COUNT="3")
    assert settings["bind"] == "127.0.0.1:7999"
    assert settings["workers"] == 3
    assert settings["worker_class"] == "gthread" and settings["threads"] >= 2
    assert settings["accesslog"] == "-" and settings["errorlog"] == "-"
    assert settings["control_socket_disable"] is True


def test_gunicorn_stops_within_the_runtimes_and_the_supervisors_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graceful = gunicorn_settings(monkeypatch)["graceful_timeout"]
    stop_grace = inspect.signature(AppSupervisor).parameters["stop_grace_s"].default
    assert 0 < graceful < stop_grace  # the runtime waits this long before SIGKILL
    assert graceful < STOP_TIMEOUT_S  # and the supervisor this long for the whole enclave


def test_the_access_log_is_one_json_object_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn.config import Config as GunicornConfig

    settings = gunicorn_settings(monkeypatch)
    cfg = GunicornConfig()
    cfg.set("accesslog", "-")
    log = settings["JsonAccessLogger"](cfg)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    log.access_log.handlers = [handler]
    environ = {
        "REQUEST_METHOD": "PUT",
        "RAW_URI": '/notes/a"b?token=query-secret',
        "PATH_INFO": '/notes/a"b',
        "QUERY_STRING": "token=query-secret",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_X_FORWARDED_FOR": "203.0.113.9, 198.51.100.7",
        "HTTP_USER_AGENT": "curl/8",
        "HTTP_AUTHORIZATION": "Bearer header-secret",
    }
    response = SimpleNamespace(status="201 Created", sent=42, headers=[])
    request = SimpleNamespace(headers=[("AUTHORIZATION", "Bearer header-secret")])
    log.access(response, request, environ, timedelta(milliseconds=12.5))
    line = out.getvalue()
    assert line.count("\n") == 1
    record = json.loads(line)
    assert {k: record[k] for k in ("type", "method", "path", "status", "bytes", "client")} == {
        "type": "access",
        "method": "PUT",
        "path": '/notes/a"b',
        "status": 201,
        "bytes": 42,
        "client": "198.51.100.7",  # the address the runtime appended, not the client's claim
    }
    assert record["duration_ms"] == 12.5 and record["user_agent"] == "curl/8"
    assert "secret" not in line  # no query string, no headers
    cfg.set("accesslog", None)
    log.access(response, request, environ, timedelta(milliseconds=1))
    assert out.getvalue() == line  # access log off: nothing
