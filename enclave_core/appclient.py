"""A small typed client for the runtime's app API, for the app that runs inside the enclave.

``EnclaveClient.from_env()`` reads ``ENCLAVE_API_URL`` and ``ENCLAVE_MGMT_TOKEN``; ``get``,
``put`` (with ``if_match`` or ``if_none_match``), ``delete``, ``list``, the secret calls and the
PCR calls follow the README's "App API". Standard library only; one keep-alive connection per
thread (and per forked process), so one client serves every thread of an app. Errors are the
:class:`AppApiError` family with the status and the runtime's ``description``, never the token.
"""

from __future__ import annotations

import base64
import builtins
import http.client
import json
import os
import select
import socket
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

__all__ = [
    "API_URL_ENV",
    "TOKEN_ENV",
    "AppApiError",
    "BadRequest",
    "Conflict",
    "EnclaveClient",
    "Forbidden",
    "NotFound",
    "PreconditionFailed",
    "Secret",
    "SecretInfo",
    "StoredObject",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
]

#: The variables the runtime gives the app: the app API's address and its Bearer token.
API_URL_ENV = "ENCLAVE_API_URL"
TOKEN_ENV = "ENCLAVE_MGMT_TOKEN"  # noqa: S105 - the variable's name, not a token
DEFAULT_TIMEOUT_S = 10.0
#: Requests that may be sent again when a kept-alive connection turns out to be closed.
_RETRYABLE = frozenset({"GET", "PUT", "DELETE"})
#: What a closed kept-alive connection looks like when it is reused.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


# -- errors --------------------------------------------------------------------------------------
class AppApiError(Exception):
    """A call to the app API failed: its ``status`` (None: no answer), ``title``, ``description``.

    The message reads ``PUT /v1/storage/k: 412 Precondition failed: <description>``.
    """

    def __init__(
        self, status: int | None, title: str, description: str, *, method: str = "", path: str = ""
    ) -> None:
        self.status = status
        self.title = title
        self.description = description
        self.method = method
        self.path = path
        where = f"{method} {path}: " if method else ""
        code = f"{status} " if status is not None else ""
        super().__init__(f"{where}{code}{title}: {description}")


class BadRequest(AppApiError):
    """400: an invalid key, name, body or header (the description names the rule)."""


class Unauthorized(AppApiError):
    """401: no Bearer token was sent."""


class Forbidden(AppApiError):
    """403: the token is not this boot's management token."""


class NotFound(AppApiError):
    """404: no such object or secret."""


class Conflict(AppApiError):
    """409: the PCR's state forbids the operation (it is locked)."""


class PreconditionFailed(AppApiError):
    """412: ``If-Match`` or ``If-None-Match: *`` did not hold; nothing was written."""


class TooLarge(AppApiError):
    """413: the body is over the limit (10 MiB per object, 64 KiB per JSON request)."""


class Unavailable(AppApiError):
    """503 (the runtime is booting or degraded), or no answer at all (``status`` is None).

    ``retry_after`` is the runtime's ``Retry-After`` in seconds, when it gave one.
    """

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


_BY_STATUS: dict[int, type[AppApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: TooLarge,
    503: Unavailable,
}


# -- results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredObject:
    """A stored object: its bytes and its ETag (give it to ``put(..., if_match=)``)."""

    data: bytes
    etag: str


@dataclass(frozen=True)
class SecretInfo:
    """A dynamic secret as listed: never its value. Times are ISO 8601 strings."""

    name: str
    env_var: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Secret(SecretInfo):
    """A dynamic secret with its value (left out of ``repr``, so logging it does not leak it)."""

    value: str = field(repr=False, kw_only=True)


# -- the client ----------------------------------------------------------------------------------
class _PerThread(threading.local):
    """This thread's connection and the process that opened it."""

    conn: http.client.HTTPConnection | None = None
    pid: int = 0


class EnclaveClient:
    """The app API: encrypted storage, dynamic secrets and PCRs (thread-safe; see the module)."""

    def __init__(self, base_url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Talk to the app API at ``base_url`` (``http://127.0.0.1:PORT``) with ``token``.

        :raises ValueError: the URL is not ``http://host:port``, or the token could not be sent
            as a header (the message never quotes it).
        """
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"the app API's URL must be http://host:port, not {base_url!r}")
        if not token or not token.isascii() or not token.isprintable() or " " in token:
            raise ValueError("the management token must be printable ASCII without spaces")
        self._url = base_url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._auth = f"Bearer {token}"
        self._timeout = timeout
        self._local = _PerThread()
        self._lock = threading.Lock()
        self._connections: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> EnclaveClient:
        """The client for the app API the runtime gave this process (its environment).

        :raises Unavailable: ``ENCLAVE_API_URL`` or ``ENCLAVE_MGMT_TOKEN`` is not set (the app
            is not running under the runtime, e.g. not started by ``enclave dev``).
        """
        env = os.environ if environ is None else environ
        url, token = env.get(API_URL_ENV), env.get(TOKEN_ENV)
        if not url or not token:
            raise Unavailable(
                None,
                "Not configured",
                f"{API_URL_ENV} and {TOKEN_ENV} are not set: run the app under the runtime",
            )
        return cls(url, token, timeout=timeout)

    def __repr__(self) -> str:
        return f"EnclaveClient({self._url!r})"

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this client opened (a later call opens a new one)."""
        with self._lock:
            connections = builtins.list(self._connections)
            self._connections.clear()
        for conn in connections:
            conn.close()

    # -- storage ---------------------------------------------------------------------------------
    def get(self, key: str) -> StoredObject:
        """The object stored under ``key``, with its ETag.

        :raises NotFound: nothing is stored under ``key``.
        """
        _status, headers, body = self._call("GET", _storage_path(key))
        return StoredObject(data=body, etag=headers.get("ETag", ""))

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Store ``data`` under ``key``, encrypted; return the new ETag.

        :param if_match: write only if the current ETag is this one.
        :param if_none_match: write only if nothing is stored under ``key`` yet.
        :raises PreconditionFailed: the condition did not hold; nothing was written.
        :raises TooLarge: ``data`` is over 10 MiB.
        """
        headers = {"Content-Type": "application/octet-stream"}
        if if_match is not None:
            headers["If-Match"] = if_match
        if if_none_match:
            headers["If-None-Match"] = "*"
        _status, answer, _body = self._call("PUT", _storage_path(key), bytes(data), headers)
        return answer.get("ETag", "")

    def delete(self, key: str) -> bool:
        """Delete ``key``; return False when nothing was stored under it."""
        try:
            self._call("DELETE", _storage_path(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str = "") -> builtins.list[str]:
        """The keys starting with ``prefix`` (all of them by default)."""
        path = "/v1/storage" + (f"?{urlencode({'prefix': prefix})}" if prefix else "")
        keys = self._json("GET", path)["keys"]
        return [str(key) for key in keys]

    # -- dynamic secrets -------------------------------------------------------------------------
    def get_secret(self, name: str) -> Secret:
        """The dynamic secret ``name`` with its value.

        :raises NotFound: there is no such secret.
        """
        doc = self._json("GET", _secret_path(name))
        return Secret(
            name=str(doc["name"]),
            env_var=doc.get("env_var"),
            created_at=str(doc["created_at"]),
            updated_at=str(doc["updated_at"]),
            value=str(doc["value"]),
        )

    def put_secret(self, name: str, value: str, env_var: str | None = None) -> None:
        """Create or replace the dynamic secret ``name``.

        :param env_var: also give it to the app as this environment variable from its next start.
        """
        doc: dict[str, str] = {"value": value}
        if env_var is not None:
            doc["env_var"] = env_var
        self._json("PUT", _secret_path(name), doc)

    def delete_secret(self, name: str) -> bool:
        """Delete the dynamic secret ``name``; return False when there was none."""
        try:
            self._call("DELETE", _secret_path(name))
        except NotFound:
            return False
        return True

    def list_secrets(self) -> builtins.list[SecretInfo]:
        """Every dynamic secret's name, env var and times (never the values)."""
        return [
            SecretInfo(
                name=str(doc["name"]),
                env_var=doc.get("env_var"),
                created_at=str(doc["created_at"]),
                updated_at=str(doc["updated_at"]),
            )
            for doc in self._json("GET", "/v1/secrets")["secrets"]
        ]

    # -- PCRs ------------------------------------------------------------------------------------
    def extend_pcr(self, pcr: int, data: bytes) -> bytes:
        """Extend PCR ``pcr`` (16 to 31) with ``data``; return its new value.

        :raises Conflict: the PCR is locked.
        """
        doc = {"pcr": pcr, "data": base64.b64encode(data).decode("ascii")}
        return bytes.fromhex(self._json("POST", "/v1/extend-pcr", doc)["value"])

    def lock_pcr(self, pcr: int) -> None:
        """Lock PCR ``pcr`` (16 to 31) against further extension until the enclave stops."""
        self._json("POST", "/v1/lock-pcr", {"pcr": pcr})

    # -- HTTP ------------------------------------------------------------------------------------
    def _json(self, method: str, path: str, doc: Any = None) -> dict[str, Any]:
        """Call with an optional JSON body; return the JSON object answered."""
        body = None if doc is None else json.dumps(doc).encode("utf-8")
        headers = {} if doc is None else {"Content-Type": "application/json"}
        status, _headers, answer = self._call(method, path, body, headers)
        try:
            result = json.loads(answer)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise AppApiError(
                status, "Bad answer", "the answer is not a JSON object", method=method, path=path
            )
        return result

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request, on this thread's connection; a 2xx answer, or the matching error.

        A kept-alive connection the runtime has closed meanwhile is replaced: checked before it
        is reused, and for GET, PUT and DELETE (which may be repeated) the request is sent once
        more on a new connection if it still fails before any answer. A POST is never repeated:
        extending a PCR twice would change it twice.
        """
        sent = {"Authorization": self._auth, **(headers or {})}
        target = self._prefix + path
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                conn.request(method, target, body=body, headers=sent)
                response = conn.getresponse()
                answer = response.read()
            except _STALE as exc:
                self._discard(conn)
                if reused and attempt == 1 and method in _RETRYABLE:
                    continue
                raise self._unreachable(method, path, exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._discard(conn)
                raise self._unreachable(method, path, exc) from exc
            if response.will_close:
                self._discard(conn)
            if 200 <= response.status < 300:
                return response.status, response.headers, answer
            raise _error(method, path, response.status, response.headers, answer)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection (a new one after a fork or a close); whether it is reused."""
        local = self._local
        conn = local.conn
        if conn is not None and local.pid != os.getpid():
            conn = local.conn = None  # the parent's socket: leave it to the parent
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            self._discard(conn)
            conn = None
        if conn is not None:
            return conn, conn.sock is not None
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        local.conn, local.pid = conn, os.getpid()
        with self._lock:
            self._connections.add(conn)
        return conn, False

    def _discard(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        if self._local.conn is conn:
            self._local.conn = None
        with self._lock:
            self._connections.discard(conn)

    @staticmethod
    def _unreachable(method: str, path: str, exc: BaseException) -> Unavailable:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Unavailable(
            None, "Unreachable", f"no answer from the app API ({what})", method=method, path=path
        )


def _storage_path(key: str) -> str:
    # '/' separates the key's segments and stays; everything else that is not a URL-safe
    # character (spaces, '%', '?', '#', non-ASCII) is percent-encoded as UTF-8.
    return "/v1/storage/" + quote(key, safe="/")


def _secret_path(name: str) -> str:
    return "/v1/secrets/" + quote(name, safe="")


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle kept-alive socket is readable: the runtime closed it (or sent junk)."""
    try:
        if hasattr(select, "poll"):  # not limited to descriptors below 1024, as select() is
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _error(
    method: str, path: str, status: int, headers: http.client.HTTPMessage, body: bytes
) -> AppApiError:
    """The exception for a non-2xx answer, with the runtime's ``title`` and ``description``."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    reason = http.client.responses.get(status, "Error")
    title = str(doc.get("title") or reason)
    description = str(doc.get("description") or title)
    cls = _BY_STATUS.get(status, AppApiError)
    if cls is Unavailable:
        return Unavailable(
            status,
            title,
            description,
            method=method,
            path=path,
            retry_after=_seconds(headers.get("Retry-After")),
        )
    return cls(status, title, description, method=method, path=path)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
