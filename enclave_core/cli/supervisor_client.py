"""The CLI's client for the supervisor's management API (stdlib ``urllib``, no proxies).

The address comes from ``supervisor.listen`` and the token from ``.enclave/supervisor/token``, so
every command finds the supervisor from ``-c enclave.yaml`` alone.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from enclave_core.config import Config
from enclave_core.errors import EnclaveError, StateConflict
from enclave_core.supervisor.token import read_token, token_path


class SupervisorClient:
    """``health()``, ``enclave_info()``, ``metrics()``, ``start()``, ``stop()``, ``migrate()``,
    ``migration_progress()`` and ``schedule_key_deletion()``."""

    def __init__(self, config: Config, *, timeout_s: float = 15.0) -> None:
        host, _, port = config.supervisor.listen.rpartition(":")
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"  # a wildcard listener is reachable on loopback
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self.base_url = f"http://{host}:{port}"
        self._state_dir = config.state_dir
        self._timeout_s = timeout_s
        # Loopback calls must never go through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def health(self) -> dict[str, Any]:
        """The supervisor's ``/health`` body (returned for 503 too: it explains the status)."""
        return self._json("GET", "/health", ok=(200, 503))

    def enclave_info(self) -> dict[str, Any]:
        """The runtime's enclave-info plus ``host``; EnclaveError when the runtime is down."""
        return self._json("GET", "/v1/enclave-info")

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        return self._request("GET", "/metrics")[1].decode("utf-8")

    def start(self) -> dict[str, Any]:
        """Start the enclave; StateConflict when it is already running."""
        return self._json("POST", "/v1/start", auth=True)

    def stop(self) -> dict[str, Any]:
        """Stop the enclave; StateConflict when it is already stopped."""
        return self._json("POST", "/v1/stop", auth=True)

    def migrate(
        self,
        *,
        app_dir: str | None = None,
        eif: str | None = None,
        pcr0: str | None = None,
    ) -> dict[str, Any]:
        """Start or resume a migration; the first progress (``status`` ``done`` for a no-op).

        Paths are sent as given: pass absolute ones (the supervisor may run elsewhere).
        """
        fields = {"app_dir": app_dir, "eif": eif, "pcr0": pcr0}
        body = {k: v for k, v in fields.items() if v is not None}
        return self._json("POST", "/v1/migrate", auth=True, ok=(200, 202), body=body)

    def migration_progress(self) -> dict[str, Any]:
        """The latest migration progress ``{"id","step","total","status","msg","steps"}``."""
        return self._json("GET", "/v1/migrate")

    def schedule_key_deletion(self, days: int = 7) -> dict[str, Any]:
        """Schedule deletion of ``MigrationOldKMSKeyID``; StateConflict for the key in use."""
        return self._json("POST", "/v1/schedule-key-deletion", auth=True, body={"days": days})

    # ------------------------------------------------------------------ internals

    def _json(
        self,
        method: str,
        path: str,
        *,
        auth: bool = False,
        ok: tuple[int, ...] = (200,),
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        status, raw = self._request(method, path, auth=auth, ok=ok, body=body)
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise EnclaveError(
                f"supervisor {method} {path}: answered {status} without a JSON object"
            )
        return doc

    def _request(
        self,
        method: str,
        path: str,
        *,
        auth: bool = False,
        ok: tuple[int, ...] = (200,),
        body: dict[str, Any] | None = None,
    ) -> tuple[int, bytes]:
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        if auth:
            token = read_token(self._state_dir)
            if token is None:
                raise EnclaveError(
                    f"no supervisor token at {token_path(self._state_dir)}: is `enclave dev` "
                    "or `enclave supervisor` running for this enclave.yaml?"
                )
            headers["Authorization"] = f"Bearer {token}"
        data = b"" if method == "POST" else None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        # base_url is always http://host:port built from the config: no file: or custom scheme.
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            answer = exc.read()
            exc.close()
            if exc.code in ok:
                return exc.code, answer
            raise _api_error(method, path, exc.code, answer) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EnclaveError(
                f"supervisor not reachable at {self.base_url}: is `enclave dev` or "
                f"`enclave supervisor` running? ({reason})"
            ) from None


def _api_error(method: str, path: str, status: int, body: bytes) -> EnclaveError:
    """The API's ``{"title", "description"}`` as an exception (StateConflict for 409)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    description = ""
    if isinstance(doc, dict):
        description = str(doc.get("description") or doc.get("title") or "")
    if status == 409:
        return StateConflict(description or "conflict")
    detail = description or "no detail"
    error = EnclaveError(f"supervisor {method} {path} failed ({status}): {detail}")
    error.http_status = status
    return error
