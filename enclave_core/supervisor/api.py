"""The supervisor's management API (README: Supervisor management API), a Falcon ASGI app.

Routes: ``/health``, ``/v1/enclave-info``, ``/metrics``, ``/v1/start``, ``/v1/stop``,
``/v1/migrate``, ``/v1/schedule-key-deletion`` and ``/openapi.json``; the README and
``docs/api/supervisor.json`` describe each. Bodies load through the schemas of :mod:`.schemas`;
every error is JSON ``{"title","description"}``; every request is logged and counted.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import falcon
import falcon.asgi
import marshmallow
from loguru import logger

from enclave_core import __version__
from enclave_core.config import Config
from enclave_core.errors import EnclaveError, ValidationError
from enclave_core.http.errors import install_error_handlers
from enclave_core.http.openapi import OPENAPI_PATH, OpenApiResource
from enclave_core.http.schemas import load_request
from enclave_core.supervisor import schemas
from enclave_core.supervisor.apidoc import supervisor_document
from enclave_core.supervisor.migration.service import MigrationService
from enclave_core.supervisor.prometheus import CONTENT_TYPE, SupervisorMetrics
from enclave_core.supervisor.watchdog import Watchdog

RuntimeInfo = Callable[[], dict[str, Any]]


async def require_token(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any, params: Any
) -> None:
    """Falcon hook: 401 without a Bearer token, 403 with a wrong one (constant-time compare)."""
    scheme, _, value = (req.get_header("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise falcon.HTTPUnauthorized(
            title="Unauthorized",
            description="this call needs 'Authorization: Bearer <token>'; the token is in "
            ".enclave/supervisor/token",
            challenges=["Bearer"],
        )
    if not hmac.compare_digest(value.strip().encode(), resource.token.encode()):
        raise falcon.HTTPForbidden(title="Forbidden", description="the supervisor token is wrong")


class HealthResource:
    """``GET /health``: the launcher's and watchdog's view of the enclave."""

    def __init__(self, watchdog: Watchdog) -> None:
        self._watchdog = watchdog

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """200 when running, 503 otherwise, same body either way."""
        body = await self._watchdog.health()
        resp.status = 200 if body["status"] == "running" else 503
        resp.media = body


class EnclaveInfoResource:
    """``GET /v1/enclave-info``: the runtime's own answer plus the host's facts."""

    def __init__(self, watchdog: Watchdog, runtime_info: RuntimeInfo, config: Config) -> None:
        self._watchdog = watchdog
        self._runtime_info = runtime_info
        self._config = config

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Raises RuntimeUnavailable (503) when the runtime cannot answer."""
        info = await asyncio.to_thread(self._runtime_info)
        desc = await asyncio.to_thread(self._watchdog.launcher.describe)
        info["host"] = {
            "instance_type": self._config.instance_type,
            "enclave_id": desc.enclave_id if desc else None,
            "enclave_cid": desc.enclave_cid if desc else None,
            "cpu_count": desc.cpu_count if desc else self._config.enclave.cpu_count,
            "memory_mib": desc.memory_mib if desc else self._config.enclave.memory_mib,
            "restarts": self._watchdog.restarts,
            "supervisor_version": __version__,
        }
        resp.media = info


class MetricsResource:
    """``GET /metrics``: Prometheus text exposition."""

    def __init__(
        self, watchdog: Watchdog, runtime_info: RuntimeInfo, metrics: SupervisorMetrics
    ) -> None:
        self._watchdog = watchdog
        self._runtime_info = runtime_info
        self._metrics = metrics

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The runtime counters are left out while the runtime cannot answer."""
        health = await self._watchdog.health()
        try:
            counters = (await asyncio.to_thread(self._runtime_info)).get("metrics")
        except EnclaveError:
            counters = None
        resp.data = self._metrics.render(
            up=health["status"] == "running",
            restarts=self._watchdog.restarts,
            counters=counters if isinstance(counters, dict) else None,
        )
        resp.content_type = CONTENT_TYPE


class StartResource:
    """``POST /v1/start``: start the enclave and resume the watchdog."""

    def __init__(self, watchdog: Watchdog, token: str) -> None:
        self._watchdog = watchdog
        self.token = token

    @falcon.before(require_token)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """409 when it is already running; answers with the new ``/health`` body."""
        await self._watchdog.start_enclave()
        resp.media = await self._watchdog.health()


class StopResource:
    """``POST /v1/stop``: stop the enclave and suspend the watchdog."""

    def __init__(self, watchdog: Watchdog, token: str) -> None:
        self._watchdog = watchdog
        self.token = token

    @falcon.before(require_token)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """409 when it is already stopped; answers with the new ``/health`` body."""
        await self._watchdog.stop_enclave()
        resp.media = await self._watchdog.health()


async def _json_body(req: falcon.asgi.Request, schema: marshmallow.Schema) -> dict[str, Any]:
    """The request's JSON body (``{}`` when empty) loaded with ``schema``; 400 otherwise."""
    raw = await req.stream.read(schemas.MAX_BODY)
    if not raw.strip():
        return load_request(schema, {})
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("the body is not valid JSON") from None
    return load_request(schema, doc)


class MigrateResource:
    """``POST /v1/migrate`` starts or resumes the migration; ``GET`` reports its progress."""

    def __init__(self, migration: MigrationService, token: str) -> None:
        self._migration = migration
        self.token = token

    @falcon.before(require_token)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """202 with the progress; 200 when already complete; 409 while one runs.

        A new image that cannot be read (measuring ``app_dir`` met an unreadable file) is the
        request's fault: 400 naming the file, not a 500.
        """
        request = await _json_body(req, schemas.MigrateRequestSchema())
        try:
            status, body = await self._migration.start(request)
        except OSError as exc:
            what = exc.strerror or type(exc).__name__
            where = f" ({exc.filename})" if exc.filename else ""
            raise ValidationError(f"the new image cannot be read: {what}{where}") from None
        resp.status = status
        resp.media = body

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The latest progress (``status`` ``none`` before any migration)."""
        resp.media = await self._migration.progress()


class ScheduleKeyDeletionResource:
    """``POST /v1/schedule-key-deletion``: retire the key a migration moved away from."""

    def __init__(self, migration: MigrationService, token: str) -> None:
        self._migration = migration
        self.token = token

    @falcon.before(require_token)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body ``{"days": 7..30}`` (default 7); 409 for the key in use or no old key."""
        body = await _json_body(req, schemas.ScheduleDeletionRequestSchema())
        resp.media = await self._migration.schedule_key_deletion(body["days"])


class RequestLog:
    """Middleware: logs and counts every request with its route template as the metric label."""

    def __init__(self, metrics: SupervisorMetrics) -> None:
        self._metrics = metrics

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Note when the request started."""
        req.context.started = time.perf_counter()

    async def process_response(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any, ok: bool
    ) -> None:
        """Log ``method, path, status, duration_ms`` and update the request metrics."""
        seconds = time.perf_counter() - getattr(req.context, "started", time.perf_counter())
        status = resp.status_code
        logger.info(
            "request",
            method=req.method,
            path=req.path,
            status=status,
            duration_ms=round(seconds * 1000, 2),
        )
        self._metrics.observe_request(req.method, req.uri_template or "unmatched", status, seconds)


def create_app(
    *,
    watchdog: Watchdog,
    runtime_info: RuntimeInfo,
    config: Config,
    token: str,
    metrics: SupervisorMetrics | None = None,
    migration: MigrationService | None = None,
) -> falcon.asgi.App:
    """Build the management API around its dependencies (tests pass fakes)."""
    metrics = metrics or SupervisorMetrics()
    app = falcon.asgi.App(middleware=[RequestLog(metrics)])
    app.add_route("/health", HealthResource(watchdog))
    app.add_route("/v1/enclave-info", EnclaveInfoResource(watchdog, runtime_info, config))
    app.add_route("/metrics", MetricsResource(watchdog, runtime_info, metrics))
    app.add_route("/v1/start", StartResource(watchdog, token))
    app.add_route("/v1/stop", StopResource(watchdog, token))
    if migration is not None:
        app.add_route("/v1/migrate", MigrateResource(migration, token))
        app.add_route("/v1/schedule-key-deletion", ScheduleKeyDeletionResource(migration, token))
    app.add_route(OPENAPI_PATH, OpenApiResource(lambda: supervisor_document(migration is not None)))
    install_error_handlers(app, log_name="the supervisor's log", traceback=True)
    return app
