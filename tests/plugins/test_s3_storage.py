"""Tests for the ``s3`` storage backend, over HTTP against this session's moto server.

Every request goes to moto through boto3. Error codes moto never sends (409
ConditionalRequestConflict, AccessDenied, a message quoting the request) come from a botocore
``before-call`` handler that answers in S3's place, without any HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import marshmallow
import pytest
from botocore.awsrequest import AWSResponse
from enclave_plugins.s3_storage import S3Storage

from enclave_core.config import Config
from enclave_core.crypto.envelope import MAGIC, EncryptedStorage
from enclave_core.errors import (
    AccessDenied,
    BackendError,
    NotFound,
    PreconditionFailed,
    ValidationError,
)
from enclave_core.metrics import Metrics
from enclave_core.plugin.backends import build_backend, plugins_for, validate_backends
from enclave_core.plugin.interfaces import BackendContext, Storage
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.runtime.instrumented import CountingStorage
from tests.helpers import backend_context

BUCKET = "enclave-data"
DEK = bytes(range(32))


def _context(tmp_path: Path, session: Any) -> BackendContext:
    return backend_context(tmp_path, session=session)


def _build(tmp_path: Path, session: Any, **options: Any) -> S3Storage:
    loaded = S3Storage.Options().load({"bucket": BUCKET, **options})
    return S3Storage.from_options(loaded, _context(tmp_path, session))


@pytest.fixture
def admin(moto_reset: str, boto3_session: Any) -> Any:
    """A plain boto3 S3 client on moto, with the test bucket created."""
    client = boto3_session.client("s3", endpoint_url=moto_reset)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def storage(tmp_path: Path, moto_reset: str, boto3_session: Any, admin: Any) -> S3Storage:
    return _build(tmp_path, boto3_session, endpoint_url=moto_reset, prefix="apps/hello")


def _raw(admin: Any, key: str) -> bytes:
    body = admin.get_object(Bucket=BUCKET, Key=key)["Body"]
    try:
        data: bytes = body.read()
    finally:
        body.close()
    return data


def _bucket_keys(admin: Any) -> list[str]:
    return sorted(o["Key"] for o in admin.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def _answer_instead(
    client: Any, operation: str, code: str, message: str, status: int
) -> list[dict[str, Any]]:
    """Make ``client`` answer ``operation`` with an S3 error, without HTTP; return the calls."""
    calls: list[dict[str, Any]] = []

    def answer(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        calls.append(params)
        parsed = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {}}
        return AWSResponse("https://s3.example", status, {}, None), parsed

    client.meta.events.register(f"before-call.s3.{operation}", answer)
    return calls


# --------------------------------------------------------------------------- registration, config


def test_hook_enclave_register_storage_s3() -> None:
    plugins = get_plugin_manager()
    assert plugins.storage.get("s3") is S3Storage
    assert plugins.storage.owner("s3") == "s3-storage"


def test_options_prefix_and_client_config(tmp_path: Path, boto3_session: Any) -> None:
    with pytest.raises(marshmallow.ValidationError, match="Unknown field"):
        S3Storage.Options().load({"bucket": BUCKET, "bukcet": "x"})
    with pytest.raises(marshmallow.ValidationError, match="bucket"):
        S3Storage.Options().load({})
    for bad in ("/abs", "a/../b"):
        with pytest.raises(marshmallow.ValidationError, match="prefix"):
            S3Storage.Options().load({"bucket": BUCKET, "prefix": bad})
    with pytest.raises(marshmallow.ValidationError, match="page_size"):
        S3Storage.Options().load({"bucket": BUCKET, "page_size": 1001})
    assert _build(tmp_path, boto3_session).prefix == ""
    assert _build(tmp_path, boto3_session, prefix="apps/hello").prefix == "apps/hello/"
    assert _build(tmp_path, boto3_session, prefix="apps/hello/").prefix == "apps/hello/"
    timeouts = {"connect_timeout_s": 2, "read_timeout_s": 7, "max_attempts": 3}
    storage = _build(tmp_path, boto3_session, region="eu-west-2", **timeouts)
    typed: Storage = storage  # the Protocol, statically (mypy) and at run time
    assert isinstance(typed, Storage)
    config = storage.client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert (config.connect_timeout, config.read_timeout) == (2.0, 7.0)
    assert "simple-enclave/" in config.user_agent_extra
    assert storage.client.meta.region_name == "eu-west-2"
    assert storage.client.meta.endpoint_url == "https://s3.eu-west-2.amazonaws.com"


def test_built_from_enclave_yaml(
    make_config: Callable[..., Config], moto_reset: str, admin: Any
) -> None:
    options = {"bucket": BUCKET, "prefix": "hello", "endpoint_url": moto_reset}
    config = make_config(storage={"backend": "s3", "options": options})
    storage = build_backend(config, plugins_for(config), "storage")
    assert isinstance(storage, S3Storage)
    storage.put("a/b", b"from yaml")
    assert _raw(admin, "hello/a/b") == b"from yaml"
    typo = make_config(storage={"backend": "s3", "options": {"bucket": BUCKET, "prefx": "x"}})
    problems = validate_backends(typo, plugins_for(typo))
    assert any(line.startswith("storage.options.prefx") for line in problems)


def test_endpoint_env_var_is_honoured_and_option_wins(
    tmp_path: Path, moto_reset: str, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_reset)
    fresh = boto3.session.Session(region_name="us-east-1")  # reads the variable
    storage = _build(tmp_path, fresh)
    storage.put("via-env", b"1")
    assert storage.client.meta.endpoint_url == moto_reset
    assert _raw(admin, "via-env") == b"1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens there
    other = boto3.session.Session(region_name="us-east-1")
    assert _build(tmp_path, other, endpoint_url=moto_reset).get("via-env").data == b"1"


# --------------------------------------------------------------------------- Storage operations


def test_put_get_round_trip_under_the_prefix(storage: S3Storage, admin: Any) -> None:
    etag = storage.put("notes/one.txt", b"hello")
    assert etag.startswith('"') and etag.endswith('"')
    assert admin.head_object(Bucket=BUCKET, Key="apps/hello/notes/one.txt")["ETag"] == etag
    assert _raw(admin, "apps/hello/notes/one.txt") == b"hello"
    obj = storage.get("notes/one.txt")
    assert (obj.data, obj.etag) == (b"hello", etag)
    second = storage.put("notes/one.txt", b"hello again")
    assert second != etag
    assert storage.get("notes/one.txt").data == b"hello again"


def test_missing_object_is_not_found(storage: S3Storage) -> None:
    with pytest.raises(NotFound, match="nothing/here"):
        storage.get("nothing/here")


def test_stale_if_match_fails_and_leaves_the_object(storage: S3Storage) -> None:
    first = storage.put("counter", b"1")
    second = storage.put("counter", b"2", if_match=first)
    with pytest.raises(PreconditionFailed, match="counter"):
        storage.put("counter", b"3", if_match=first)
    current = storage.get("counter")
    assert (current.data, current.etag) == (b"2", second)
    # the ETag without its quotes works as well
    third = storage.put("counter", b"3", if_match=second.strip('"'))
    assert storage.get("counter").etag == third


def test_if_none_match_refuses_an_existing_object(storage: S3Storage) -> None:
    etag = storage.put("once", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed, match="already exists"):
        storage.put("once", b"second", if_none_match=True)
    assert storage.get("once").data == b"first"
    assert storage.get("once").etag == etag


def test_if_match_on_a_missing_object_fails_and_creates_nothing(
    storage: S3Storage, admin: Any
) -> None:
    with pytest.raises(PreconditionFailed):
        storage.put("ghost", b"x", if_match='"0123456789abcdef0123456789abcdef"')
    with pytest.raises(PreconditionFailed, match="does not exist"):
        storage.put("ghost", b"x", if_match="*")
    with pytest.raises(PreconditionFailed):
        storage.put("ghost", b"x", if_match="*", if_none_match=True)
    assert _bucket_keys(admin) == []


def test_if_match_star_means_exists(storage: S3Storage) -> None:
    storage.put("present", b"old")
    etag = storage.put("present", b"new", if_match="*")
    assert storage.get("present").data == b"new"
    assert storage.get("present").etag == etag


def test_delete_says_whether_the_object_existed(storage: S3Storage, admin: Any) -> None:
    storage.put("gone", b"x")
    storage.put("kept", b"y")
    assert storage.delete("gone") is True
    assert storage.delete("gone") is False
    assert _bucket_keys(admin) == ["apps/hello/kept"]
    with pytest.raises(NotFound):
        storage.get("gone")


def test_list_paginates_sorts_and_strips_the_prefix(
    tmp_path: Path, moto_reset: str, boto3_session: Any, admin: Any
) -> None:
    storage = _build(
        tmp_path, boto3_session, endpoint_url=moto_reset, prefix="apps/hello", page_size=2
    )
    keys = ["b/2", "a/1", "b/1", "c", "a/2", "a/10", "b/3"]
    for key in keys:
        storage.put(key, key.encode())
    admin.put_object(Bucket=BUCKET, Key="apps/other/a/1", Body=b"not ours")
    pages: list[int] = []
    storage.client.meta.events.register(
        "after-call.s3.ListObjectsV2",
        lambda parsed, **_: pages.append(len(parsed.get("Contents", []))),
    )
    assert storage.list() == sorted(keys)
    assert pages == [2, 2, 2, 1]  # page_size=2 over 7 objects: every page was read
    assert storage.list("a/") == ["a/1", "a/10", "a/2"]
    assert storage.list("b/3") == ["b/3"]
    assert storage.list("zzz") == []


def test_two_prefixes_in_one_bucket_do_not_see_each_other(
    tmp_path: Path, moto_reset: str, boto3_session: Any, admin: Any
) -> None:
    one = _build(tmp_path, boto3_session, endpoint_url=moto_reset, prefix="tenant-one")
    two = _build(tmp_path, boto3_session, endpoint_url=moto_reset, prefix="tenant-two/")
    one.put("shared/name", b"one's")
    two.put("shared/name", b"two's")
    two.put("only-two", b"2")
    assert one.list() == ["shared/name"]
    assert two.list() == ["only-two", "shared/name"]
    assert one.get("shared/name").data == b"one's"
    with pytest.raises(NotFound):
        one.get("only-two")
    assert one.delete("shared/name") is True
    assert two.get("shared/name").data == b"two's"
    assert _bucket_keys(admin) == ["tenant-two/only-two", "tenant-two/shared/name"]


def test_encrypted_storage_keeps_only_ciphertext_in_the_bucket(
    storage: S3Storage, admin: Any
) -> None:
    plaintext = b"customer record: alice@example.com, card 4111-1111-1111-1111"
    encrypted = EncryptedStorage(storage, DEK)
    etag = encrypted.put("records/alice", plaintext)
    raw = _raw(admin, "apps/hello/records/alice")
    assert raw.startswith(MAGIC)
    assert plaintext not in raw and b"alice@example.com" not in raw
    assert admin.head_object(Bucket=BUCKET, Key="apps/hello/records/alice")["ETag"] == etag
    obj = encrypted.get("records/alice")
    assert (obj.data, obj.etag) == (plaintext, etag)
    with pytest.raises(PreconditionFailed):
        encrypted.put("records/alice", b"stale", if_match='"00000000000000000000000000000000"')
    assert encrypted.get("records/alice").data == plaintext


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a", "a/", "nul\x00", "k" * 1100])
def test_invalid_keys_are_refused_before_any_call(storage: S3Storage, key: str) -> None:
    calls: list[str] = []
    storage.client.meta.events.register("before-send.s3", lambda **kw: calls.append("sent"))
    with pytest.raises(ValidationError, match="s3 storage"):
        storage.put(key, b"x")
    with pytest.raises(ValidationError):
        storage.get(key)
    assert calls == []


# --------------------------------------------------------------------------- errors


def test_a_missing_bucket_is_an_error_not_a_missing_object(
    tmp_path: Path, moto_reset: str, boto3_session: Any
) -> None:
    storage = _build(tmp_path, boto3_session, endpoint_url=moto_reset, bucket="no-such-bucket")
    value = b"do-not-print-this-value"
    with pytest.raises(BackendError, match="GetObject of object s3://no-such-bucket/k") as got:
        storage.get("k")
    assert not isinstance(got.value, NotFound)
    with pytest.raises(BackendError, match="PutObject.*NoSuchBucket") as put:
        storage.put("k", value)
    assert value.decode() not in str(put.value)
    with pytest.raises(BackendError, match="bucket no-such-bucket does not exist"):
        storage.delete("k")
    with pytest.raises(BackendError, match="ListObjectsV2"):
        storage.list()


def test_s3_error_codes_map_to_project_errors(storage: S3Storage) -> None:
    _answer_instead(storage.client, "PutObject", "ConditionalRequestConflict", "retry", 409)
    with pytest.raises(PreconditionFailed, match="ConditionalRequestConflict"):
        storage.put("k", b"x", if_match='"abc"')
    _answer_instead(storage.client, "GetObject", "AccessDenied", "no s3:GetObject", 403)
    with pytest.raises(AccessDenied, match="GetObject of object s3://enclave-data/apps/hello/k"):
        storage.get("k")


def test_an_error_quoting_the_data_is_withheld(tmp_path: Path, boto3_session: Any) -> None:
    storage = _build(tmp_path, boto3_session, endpoint_url="http://127.0.0.1:9")
    value = b"ciphertext-bytes-that-must-not-leak"
    _answer_instead(storage.client, "PutObject", "InvalidRequest", f"bad body {value!r}", 400)
    with pytest.raises(ValidationError) as raised:
        storage.put("k", value)
    assert value.decode() not in str(raised.value)
    assert "withheld" in str(raised.value)


def test_unreachable_endpoint_is_a_backend_error(tmp_path: Path, boto3_session: Any) -> None:
    storage = _build(tmp_path, boto3_session, endpoint_url="http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(BackendError, match="could not reach the endpoint"):
        storage.get("k")


def test_runtime_counters_count_s3_calls_and_errors(
    tmp_path: Path, moto_reset: str, boto3_session: Any, storage: S3Storage
) -> None:
    metrics = Metrics()
    counted = CountingStorage(EncryptedStorage(storage, DEK), metrics)
    etag = counted.put("a", b"1")
    counted.get("a")
    with pytest.raises(NotFound):
        counted.get("missing")  # an answer, not an error
    with pytest.raises(PreconditionFailed):
        counted.put("a", b"2", if_none_match=True)  # likewise
    counted.put("a", b"2", if_match=etag)
    assert counted.list() == ["a"]
    assert counted.delete("a") is True
    snapshot = metrics.snapshot()
    assert (snapshot["storage_reads"], snapshot["storage_writes"]) == (3, 3)
    assert (snapshot["storage_deletes"], snapshot["storage_errors"]) == (1, 0)

    broken = _build(tmp_path, boto3_session, endpoint_url=moto_reset, bucket="missing-bucket")
    failing = CountingStorage(EncryptedStorage(broken, DEK), metrics)
    for call in (
        lambda: failing.get("a"),
        lambda: failing.put("a", b"1"),
        lambda: failing.delete("a"),
        lambda: failing.list(),
    ):
        with pytest.raises(BackendError):
            call()
    snapshot = metrics.snapshot()
    assert (snapshot["storage_reads"], snapshot["storage_writes"]) == (5, 4)
    assert (snapshot["storage_deletes"], snapshot["storage_errors"]) == (2, 4)
