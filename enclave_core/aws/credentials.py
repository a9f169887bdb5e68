"""Instance-role credentials through IMDSv2, refreshed before they expire (``credentials: imds``).

:func:`enclave_session` returns a boto3 session whose only credential provider fetches the role's
credentials from IMDSv2 at an explicit endpoint or ``$AWS_EC2_METADATA_SERVICE_ENDPOINT`` (inside
an enclave, the bridge to the host's IMDS forwarder); IMDSv1 is never used, and failures never
quote a token or a key. Building the session makes no request. The refresh window:
docs/architecture.md, "AWS clients and credentials".
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.session
from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials
from loguru import logger

from enclave_core.errors import BackendError, ConfigError

IMDS_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
# S105: the names below say "token" but hold a URL path and header names, not tokens
TOKEN_PATH = "/latest/api/token"  # noqa: S105
ROLES_PATH = "/latest/meta-data/iam/security-credentials/"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"  # noqa: S105
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105
TOKEN_TTL_S = 21600
TOKEN_RENEW_BEFORE_S = 60.0  # fetch a new token this long before the old one's TTL ends
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_ATTEMPTS = 3
RETRY_DELAY_S = 0.1  # doubled after every failed attempt
MAX_ANSWER = 64 * 1024
MAX_REFRESH_MARGIN_S = 300.0
LIFETIME_FRACTION = 1 / 3
MANDATORY_RATIO = 2 / 3  # botocore's own mandatory/advisory ratio (10 min / 15 min)
METHOD = "enclave-imds"
_ROLE_NAME = re.compile(r"^[\w+=,.@-]{1,128}$")
_CODE = re.compile(r"^[\w.-]{1,64}$")


def resolve_imds_endpoint(explicit: str | None = None) -> str:
    """The IMDS endpoint: ``explicit``, else ``$AWS_EC2_METADATA_SERVICE_ENDPOINT``, else
    ``http://169.254.169.254``; ConfigError unless it is ``http://host[:port]``."""
    endpoint = (explicit or os.environ.get(IMDS_ENDPOINT_ENV) or DEFAULT_IMDS_ENDPOINT).rstrip("/")
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname or parts.path or parts.query:
        raise ConfigError(f"IMDS endpoint {endpoint!r} must be http://HOST[:PORT]")
    return endpoint


def _reason(exc: BaseException) -> str:
    """A short, value-free description of a transport failure."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class ImdsCredentialFetcher:
    """Fetches the instance role's credentials with IMDSv2; callable as botocore's refresh hook.

    :param endpoint: ``http://host[:port]`` of IMDS (or the enclave's bridge to it).
    :param timeout_s: connect and read timeout of each request.
    :param attempts: tries per request (connection errors, timeouts and 5xx are retried).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
        token_ttl_s: int = TOKEN_TTL_S,
    ) -> None:
        self.endpoint = resolve_imds_endpoint(endpoint)
        parts = urllib.parse.urlsplit(self.endpoint)
        self._host = parts.hostname or ""
        self._port = parts.port or 80
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.token_ttl_s = token_ttl_s
        self._token: str | None = None
        self._token_until = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, str]:
        """Fetch fresh credentials as botocore metadata (access_key, secret_key, token,
        expiry_time); BackendError naming the failed step otherwise."""
        with self._lock:
            role = self._role()
            answer = self._get("credentials", ROLES_PATH + urllib.parse.quote(role))
            metadata, expiry = self._credentials(answer)
        lifetime = (expiry - datetime.now(UTC)).total_seconds()
        logger.bind(role=role).info(
            "IMDS credentials fetched",
            expires=expiry.isoformat(timespec="seconds"),
            lifetime_s=round(lifetime, 1),
        )
        return metadata

    # ------------------------------------------------------------------ the three steps

    def _fetch_token(self) -> str:
        status, body = self._request(
            "token", "PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: str(self.token_ttl_s)}
        )
        if status != 200:
            no_v2 = status in (403, 404, 405)
            hint = " (the endpoint does not issue IMDSv2 tokens)" if no_v2 else ""
            raise self._error("token", f"HTTP {status}{hint}")
        token = body.decode("ascii", "replace").strip()
        if not token:
            raise self._error("token", "the answer is empty")
        self._token = token
        self._token_until = time.monotonic() + self.token_ttl_s - TOKEN_RENEW_BEFORE_S
        return token

    def _role(self) -> str:
        lines = self._get("role name", ROLES_PATH).decode("utf-8", "replace").splitlines()
        names = [line.strip() for line in lines if line.strip()]
        if not names:
            raise self._error("role name", "no instance role is attached")
        if not _ROLE_NAME.match(names[0]):
            raise self._error("role name", "the answer is not a role name")
        return names[0]

    def _credentials(self, answer: bytes) -> tuple[dict[str, str], datetime]:
        try:
            data = json.loads(answer)
        except ValueError:
            raise self._error("credentials", "the answer is not JSON") from None
        if not isinstance(data, dict):
            raise self._error("credentials", "the answer is not a JSON object")
        code = data.get("Code", "Success")
        if code != "Success":
            shown = code if isinstance(code, str) and _CODE.match(code) else "(unreadable)"
            raise self._error("credentials", f"IMDS answered Code {shown}")
        fields = ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")
        missing = [f for f in fields if not isinstance(data.get(f), str) or not data[f]]
        if missing:
            raise self._error("credentials", f"the answer lacks {', '.join(missing)}")
        try:
            expiry = datetime.fromisoformat(data["Expiration"])
        except ValueError:
            raise self._error("credentials", "Expiration is not an ISO 8601 time") from None
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=UTC)
        if expiry <= datetime.now(UTC):
            raise self._error("credentials", "the role's credentials have already expired")
        metadata = {
            "access_key": data["AccessKeyId"],
            "secret_key": data["SecretAccessKey"],
            "token": data["Token"],
            "expiry_time": expiry.isoformat(),
        }
        return metadata, expiry

    # ------------------------------------------------------------------ HTTP

    def _get(self, step: str, path: str) -> bytes:
        """GET with the session token; a 401 (token expired or revoked) gets one new token."""
        fresh = False
        if self._token is None or time.monotonic() >= self._token_until:
            self._fetch_token()
            fresh = True
        while True:
            status, body = self._request(step, "GET", path, {TOKEN_HEADER: self._token or ""})
            if status == 401 and not fresh:
                self._token = None
                self._fetch_token()
                fresh = True
                continue
            if status == 404 and step == "role name":
                raise self._error(step, "HTTP 404 (no instance role is attached)")
            if status != 200:
                raise self._error(step, f"HTTP {status}")
            return body

    def _request(
        self, step: str, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """One request, retried on transport errors and 5xx; returns (status, body)."""
        reason = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
            try:
                connection.request(method, path, headers=headers)
                response = connection.getresponse()
                body = response.read(MAX_ANSWER + 1)
            except (OSError, http.client.HTTPException) as exc:
                reason = _reason(exc)
                logger.warning("IMDS request failed", step=step, attempt=attempt + 1, reason=reason)
                continue
            finally:
                connection.close()
            if response.status >= 500:
                reason = f"HTTP {response.status}"
                logger.warning("IMDS request failed", step=step, attempt=attempt + 1, reason=reason)
                continue
            if len(body) > MAX_ANSWER:
                raise self._error(step, "the answer is too large")
            return response.status, body
        raise self._error(step, f"{reason} after {self.attempts} attempts")

    def _error(self, step: str, reason: str) -> BackendError:
        return BackendError(f"IMDS credentials: {step} failed: {reason} (endpoint {self.endpoint})")


class ScaledRefreshableCredentials(RefreshableCredentials):
    """RefreshableCredentials whose refresh margins scale with the credentials' lifetime.

    botocore refreshes in the background ("advisory") when less than
    ``_advisory_refresh_timeout`` seconds remain and blocks every caller ("mandatory") under
    ``_mandatory_refresh_timeout``. Here, after every fetch, the advisory margin becomes
    ``min(max_margin_s, lifetime_fraction * lifetime)`` and the mandatory one 2/3 of it, per
    instance (the class attributes stay botocore's). Set them with :meth:`set_margins`.
    """

    max_margin_s: float = MAX_REFRESH_MARGIN_S
    lifetime_fraction: float = LIFETIME_FRACTION

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scale_margins()

    def set_margins(self, *, max_margin_s: float, lifetime_fraction: float) -> None:
        """Set the margin parameters and rescale the current margins with them."""
        if max_margin_s <= 0 or not 0 < lifetime_fraction < 1:
            raise ConfigError("refresh margins need max_margin_s > 0 and 0 < fraction < 1")
        self.max_margin_s = max_margin_s
        self.lifetime_fraction = lifetime_fraction
        self._scale_margins()

    @property
    def margins(self) -> tuple[float, float]:
        """The current (advisory, mandatory) refresh margins in seconds."""
        return float(self._advisory_refresh_timeout), float(self._mandatory_refresh_timeout)

    def _set_from_data(self, data: Any) -> None:
        super()._set_from_data(data)
        # Newer botocore stages the new expiry instead of setting it here, so the lifetime comes
        # from the fetched data itself rather than from ``_seconds_remaining()``.
        expiry = data.get("expiry_time") if isinstance(data, dict) else None
        self._known_expiry = _as_datetime(expiry) if expiry else None
        self._scale_margins()

    def _scale_margins(self) -> None:
        known: datetime | None = getattr(self, "_known_expiry", None)
        if known is not None:
            lifetime = (known - datetime.now(UTC)).total_seconds()
        else:
            lifetime = float(self._seconds_remaining())
        lifetime = max(0.0, lifetime)
        advisory = min(self.max_margin_s, lifetime * self.lifetime_fraction)
        self._advisory_refresh_timeout = advisory
        self._mandatory_refresh_timeout = advisory * MANDATORY_RATIO


def _as_datetime(expiry: Any) -> datetime:
    """An ISO-8601 expiry (string or datetime) as an aware datetime."""
    if isinstance(expiry, datetime):
        when = expiry
    else:
        when = datetime.fromisoformat(str(expiry).replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class ImdsCredentialProvider(CredentialProvider):
    """botocore credential provider: IMDSv2 credentials as ScaledRefreshableCredentials."""

    METHOD = METHOD
    CANONICAL_NAME = "EnclaveImds"

    def __init__(
        self,
        fetcher: ImdsCredentialFetcher,
        *,
        max_margin_s: float = MAX_REFRESH_MARGIN_S,
        lifetime_fraction: float = LIFETIME_FRACTION,
    ) -> None:
        super().__init__()
        self.fetcher = fetcher
        self.max_margin_s = max_margin_s
        self.lifetime_fraction = lifetime_fraction

    def load(self) -> ScaledRefreshableCredentials:
        """Fetch the first credentials (botocore calls this when the first client is made)."""
        credentials = ScaledRefreshableCredentials.create_from_metadata(
            metadata=self.fetcher(), refresh_using=self.fetcher, method=self.METHOD
        )
        credentials.set_margins(
            max_margin_s=self.max_margin_s, lifetime_fraction=self.lifetime_fraction
        )
        return credentials


def enclave_session(
    region: str | None,
    *,
    imds_endpoint: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    attempts: int = DEFAULT_ATTEMPTS,
    max_margin_s: float = MAX_REFRESH_MARGIN_S,
    lifetime_fraction: float = LIFETIME_FRACTION,
) -> boto3.session.Session:
    """A boto3 session whose only credentials are the instance role's, through IMDSv2.

    :param imds_endpoint: default ``$AWS_EC2_METADATA_SERVICE_ENDPOINT``, else
        ``http://169.254.169.254`` (read now; ConfigError if it is not ``http://host[:port]``).
    No request is made here: the first fetch happens when the session's first client is built;
    botocore refreshes before expiry (see :class:`ScaledRefreshableCredentials`).
    """
    fetcher = ImdsCredentialFetcher(
        resolve_imds_endpoint(imds_endpoint), timeout_s=timeout_s, attempts=attempts
    )
    provider = ImdsCredentialProvider(
        fetcher, max_margin_s=max_margin_s, lifetime_fraction=lifetime_fraction
    )
    core = botocore.session.Session()
    core.register_component("credential_provider", CredentialResolver([provider]))
    return boto3.session.Session(botocore_session=core, region_name=region)
