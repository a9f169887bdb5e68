"""Tests for ``credentials: imds``: IMDSv2 credentials that refresh before they expire.

A fake IMDS on loopback (test-only) requires the IMDSv2 token (401 without it) and hands out
credentials that expire after about three seconds, with a new access key id each time. Storage and
KMS calls go through real boto3 clients to the session's moto server (which accepts any key), and
a ``before-send`` hook records which access key signed each request and when.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import marshmallow
import pytest
from botocore.credentials import RefreshableCredentials
from enclave_plugins.aws_kms import AwsKms
from loguru import logger

from enclave_core.aws.clients import AwsClients
from enclave_core.aws.credentials import (
    DEFAULT_IMDS_ENDPOINT,
    IMDS_ENDPOINT_ENV,
    METHOD,
    ImdsCredentialFetcher,
    ScaledRefreshableCredentials,
    enclave_session,
    resolve_imds_endpoint,
)
from enclave_core.errors import BackendError, ConfigError
from enclave_core.plugin.interfaces import BackendContext
from enclave_core.testing import free_port
from tests.helpers import backend_context

ROLE = "enclave-instance-role"
ROLES = "/latest/meta-data/iam/security-credentials/"
CONTEXT = {"app": "hello", "purpose": "storage-dek"}


@dataclass(frozen=True)
class Issued:
    """One credential set the fake IMDS handed out."""

    access_key: str
    secret_key: str
    token: str
    expiry: datetime


class FakeImds(ThreadingHTTPServer):
    """TEST-ONLY IMDS: IMDSv2 tokens, one role, short-lived credentials with rotating key ids.

    ``v2=False`` makes it an IMDSv1-only service (no token endpoint, GETs without a token).
    ``answer`` overrides fields of the credentials document (None removes one).
    """

    daemon_threads = True

    def __init__(self, *, lifetime_s: float = 3.0, v2: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _ImdsHandler)
        self.lifetime_s = lifetime_s
        self.v2 = v2
        self.roles = [ROLE]
        self.answer: dict[str, Any] = {}
        self.tokens: set[str] = set()
        self.issued: list[Issued] = []
        self.requests: list[tuple[str, str, int]] = []  # method, path, status
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def issue(self) -> dict[str, Any]:
        # IMDS writes Expiration to the second, so the lifetime is lifetime_s minus < 1 s
        expiry = (datetime.now(UTC) + timedelta(seconds=self.lifetime_s)).replace(microsecond=0)
        with self.lock:
            issued = Issued(
                access_key=f"ASIAFAKE{len(self.issued):012d}",
                secret_key=secrets.token_hex(20),
                token=secrets.token_hex(32),
                expiry=expiry,
            )
            self.issued.append(issued)
        document = {
            "Code": "Success",
            "LastUpdated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Type": "AWS-HMAC",
            "AccessKeyId": issued.access_key,
            "SecretAccessKey": issued.secret_key,
            "Token": issued.token,
            "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        document.update(self.answer)
        return {k: v for k, v in document.items() if v is not None}


class _ImdsHandler(BaseHTTPRequestHandler):
    server: FakeImds

    def _send(self, status: int, body: bytes = b"") -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, status))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        if not self.server.v2 or self.path != "/latest/api/token":
            return self._send(404)
        if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "").isdigit():
            return self._send(400)
        token = secrets.token_urlsafe(24)
        with self.server.lock:
            self.server.tokens.add(token)
        self._send(200, token.encode())

    def do_GET(self) -> None:
        if self.server.v2:
            with self.server.lock:
                valid = self.headers.get("X-aws-ec2-metadata-token") in self.server.tokens
            if not valid:
                return self._send(401)
        if self.path == ROLES:
            if not self.server.roles:
                return self._send(404)
            return self._send(200, "\n".join(self.server.roles).encode())
        if self.path == ROLES + ROLE:
            return self._send(200, json.dumps(self.server.issue()).encode())
        self._send(404)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(server: ThreadingHTTPServer) -> Iterator[Any]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    yield from _serve(FakeImds())


@pytest.fixture
def imds_v1() -> Iterator[FakeImds]:
    yield from _serve(FakeImds(v2=False))


class Signed:
    """Records the access key id and the time of every request a session or client sends."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, datetime]] = []

    def __call__(self, request: Any, **_: Any) -> None:
        header = request.headers["Authorization"]
        text = header.decode() if isinstance(header, bytes) else header
        key_id = text.split("Credential=", 1)[1].split("/", 1)[0]
        self.requests.append((key_id, datetime.now(UTC)))

    @property
    def key_ids(self) -> set[str]:
        return {key for key, _ in self.requests}


def _context(tmp_path: Path) -> BackendContext:
    return backend_context(tmp_path, app_dir=tmp_path / "app")


def _imds_kms(tmp_path: Path, moto: str, **options: Any) -> AwsKms:
    loaded = AwsKms.Options().load({"endpoint_url": moto, "credentials": "imds", **options})
    return AwsKms.from_options(loaded, _context(tmp_path))


# --------------------------------------------------------------------------- refresh


def test_calls_keep_working_across_several_expiries(
    imds: FakeImds, moto_reset: str, tmp_path: Path
) -> None:
    admin = boto3.session.Session(region_name="us-east-1").client("s3", endpoint_url=moto_reset)
    admin.create_bucket(Bucket="enclave-data")
    session = enclave_session("us-east-1", imds_endpoint=imds.url)
    s3_signed, kms_signed = Signed(), Signed()
    session.events.register("before-send", s3_signed)
    s3 = session.client("s3", endpoint_url=moto_reset)
    kms = _imds_kms(tmp_path, moto_reset, imds_endpoint=imds.url)
    kms.client.meta.events.register("before-send", kms_signed)
    key = kms.create_key(description="refresh").key_id
    written: dict[str, bytes] = {}
    deadline = time.monotonic() + 45
    while len(s3_signed.key_ids) < 4 or len(kms_signed.key_ids) < 3:
        assert time.monotonic() < deadline, (s3_signed.key_ids, kms_signed.key_ids)
        name = f"objects/{len(written):03d}"
        written[name] = secrets.token_bytes(64)
        s3.put_object(Bucket="enclave-data", Key=name, Body=written[name])
        assert s3.get_object(Bucket="enclave-data", Key=name)["Body"].read() == written[name]
        blob = kms.encrypt(key, written[name], CONTEXT)
        assert kms.decrypt(key, blob, CONTEXT).plaintext == written[name]
        time.sleep(0.5)
    for name, body in written.items():  # everything written under earlier keys is still there
        assert s3.get_object(Bucket="enclave-data", Key=name)["Body"].read() == body
    expiry = {issued.access_key: issued.expiry for issued in imds.issued}
    assert len(expiry) >= 7  # at least four S3 and three KMS credential sets
    # refreshed before expiry, not before every request (botocore's 15 min margin would)
    assert len(s3_signed.key_ids) < len(s3_signed.requests)
    # every request was signed with credentials the fake IMDS issued, before they expired
    for key_id, at in s3_signed.requests + kms_signed.requests:
        assert key_id in expiry and at < expiry[key_id]
    assert session.get_credentials().method == METHOD


def test_margins_scale_with_the_lifetime() -> None:
    def metadata(lifetime: timedelta) -> dict[str, str]:
        when = datetime.now(UTC) + lifetime
        return {"access_key": "A", "secret_key": "S", "token": "T", "expiry_time": when.isoformat()}

    short = ScaledRefreshableCredentials.create_from_metadata(
        metadata(timedelta(seconds=3)), lambda: metadata(timedelta(hours=6)), METHOD
    )
    advisory, mandatory = short.margins
    assert 0.9 < advisory <= 1.0 and mandatory == pytest.approx(advisory * 2 / 3)
    assert not short.refresh_needed()
    short._set_from_data(metadata(timedelta(hours=6)))  # what a refresh does
    assert short.margins == (300.0, 200.0)
    short.set_margins(max_margin_s=60, lifetime_fraction=0.5)
    assert short.margins == (60.0, 40.0)
    for bad in (
        {"max_margin_s": 0, "lifetime_fraction": 0.5},
        {"max_margin_s": 1, "lifetime_fraction": 1},
    ):
        with pytest.raises(ConfigError):
            short.set_margins(**bad)
    # per instance: the class attributes stay botocore's
    assert "_advisory_refresh_timeout" not in vars(ScaledRefreshableCredentials)
    assert RefreshableCredentials._advisory_refresh_timeout == 15 * 60


def test_expired_token_is_replaced(imds: FakeImds) -> None:
    fetcher = ImdsCredentialFetcher(imds.url)
    first = fetcher()
    imds.revoke_tokens()  # as when the token's TTL has run out
    second = fetcher()
    assert first["access_key"] != second["access_key"]
    assert [r for r in imds.requests if r[0] == "PUT"] == [("PUT", "/latest/api/token", 200)] * 2
    assert ("GET", ROLES, 401) in imds.requests
    with pytest.raises(urllib.error.HTTPError) as denied:  # the fake insists on IMDSv2
        urllib.request.urlopen(f"{imds.url}{ROLES}", timeout=5)
    assert denied.value.code == 401
    denied.value.close()


# --------------------------------------------------------------------------- laziness, endpoints


def test_nothing_is_fetched_before_the_first_client(
    imds: FakeImds, moto_reset: str, tmp_path: Path
) -> None:
    session = enclave_session("us-east-1", imds_endpoint=imds.url)
    kms = _imds_kms(tmp_path, moto_reset, imds_endpoint=imds.url)
    assert imds.requests == []
    session.client("s3", endpoint_url=moto_reset)
    assert [(m, p) for m, p, _ in imds.requests] == [
        ("PUT", "/latest/api/token"),
        ("GET", ROLES),
        ("GET", ROLES + ROLE),
    ]
    kms.create_key()
    assert len(imds.issued) == 2  # the backend's own session fetched on its first call


def test_endpoint_from_the_environment_and_the_option_wins(
    imds: FakeImds, moto_reset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(IMDS_ENDPOINT_ENV, raising=False)
    assert resolve_imds_endpoint() == DEFAULT_IMDS_ENDPOINT
    monkeypatch.setenv(IMDS_ENDPOINT_ENV, imds.url + "/")
    assert resolve_imds_endpoint() == imds.url
    enclave_session("us-east-1").client("sts", endpoint_url=moto_reset)
    assert len(imds.issued) == 1
    _imds_kms(tmp_path, moto_reset).create_key()
    assert len(imds.issued) == 2
    monkeypatch.setenv(IMDS_ENDPOINT_ENV, f"http://127.0.0.1:{free_port()}")  # nobody there
    enclave_session("us-east-1", imds_endpoint=imds.url).client("sts", endpoint_url=moto_reset)
    assert len(imds.issued) == 3
    for bad in ("https://169.254.169.254", "169.254.169.254", "http://host/latest"):
        with pytest.raises(ConfigError):
            resolve_imds_endpoint(bad)


def test_options(tmp_path: Path, boto3_session: Any, imds: FakeImds) -> None:
    options = AwsKms.Options()
    assert options.load({})["credentials"] == "default"
    assert options.load({"credentials": "imds", "imds_endpoint": imds.url})["credentials"] == "imds"
    for bad in (
        {"credentials": "static"},
        {"imds_endpoint": imds.url},  # only meaningful with credentials: imds
        {"credentials": "imds", "imds_endpoint": "https://169.254.169.254"},
    ):
        with pytest.raises(marshmallow.ValidationError):
            options.load(bad)
    # the default keeps an injected session; imds replaces it with its own
    assert AwsClients(session=boto3_session).session is boto3_session
    clients = AwsClients(session=boto3_session, credentials="imds", imds_endpoint=imds.url)
    assert clients.session is not boto3_session and imds.requests == []
    with pytest.raises(ConfigError):
        AwsClients(credentials="static")


# --------------------------------------------------------------------------- errors


def test_imdsv1_only_endpoint_is_a_clear_error(
    imds_v1: FakeImds, moto_reset: str, tmp_path: Path
) -> None:
    session = enclave_session("us-east-1", imds_endpoint=imds_v1.url)
    with pytest.raises(BackendError) as error:
        session.client("s3", endpoint_url=moto_reset)
    assert str(error.value).startswith(
        "IMDS credentials: token failed: HTTP 404 (the endpoint does not issue IMDSv2 tokens)"
    )
    with pytest.raises(BackendError) as again:
        _imds_kms(tmp_path, moto_reset, imds_endpoint=imds_v1.url).create_key()
    assert str(again.value) == str(error.value)
    assert all(method == "PUT" for method, _, _ in imds_v1.requests)  # never fell back to v1


def test_failures_name_the_step_and_never_a_value(imds: FakeImds) -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG", serialize=True)
    errors: list[str] = []
    try:
        fetcher = ImdsCredentialFetcher(imds.url)
        fetcher()
        cases: list[tuple[dict[str, Any], str]] = [
            ({"Token": None}, "credentials failed: the answer lacks Token"),
            ({"Code": "AssumeRoleUnauthorizedAccess"}, "IMDS answered Code AssumeRoleUnauthorized"),
            ({"Expiration": "2001-01-01T00:00:00Z"}, "credentials have already expired"),
            ({"Expiration": "tomorrow"}, "Expiration is not an ISO 8601 time"),
        ]
        for answer, expected in cases:
            imds.answer = answer
            with pytest.raises(BackendError) as error:
                fetcher()
            assert expected in str(error.value)
            errors.append(str(error.value))
        imds.answer, imds.roles = {}, []
        with pytest.raises(BackendError) as no_role:
            fetcher()
        assert "IMDS credentials: role name failed: HTTP 404" in str(no_role.value)
        errors.append(str(no_role.value))
        nobody = ImdsCredentialFetcher(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
        with pytest.raises(BackendError) as refused:
            nobody()
        assert "token failed: connection refused after 3 attempts" in str(refused.value)
        errors.append(str(refused.value))
    finally:
        logger.remove(sink)
    assert any("IMDS credentials fetched" in line for line in lines)
    assert sum("IMDS request failed" in line for line in lines) == 3
    for issued in imds.issued:
        for value in (issued.access_key, issued.secret_key, issued.token):
            assert not any(value in text for text in lines + errors)
    assert not any(token in text for token in imds.tokens for text in lines + errors)
