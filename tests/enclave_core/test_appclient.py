"""enclave_core.appclient against the runtime's real app API, served over loopback HTTP.

The app API runs in the runtime's own HTTP server with in-memory backends
(tests/doubles/appapi_server.py); the client talks to it over real sockets, so every error
class below comes from a real answer.
"""

from __future__ import annotations

import hashlib
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from enclave_core.appclient import (
    AppApiError,
    BadRequest,
    Conflict,
    EnclaveClient,
    Forbidden,
    NotFound,
    PreconditionFailed,
    Secret,
    SecretInfo,
    StoredObject,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from enclave_core.config import Config
from enclave_core.runtime.appapi import MAX_JSON_BODY, MAX_STORAGE_BODY
from enclave_core.testing import free_port
from tests.doubles.appapi_server import TOKEN, AppApi, app_api_servers
from tests.doubles.memory_backends import MemoryNsm

WRONG = "ba" * 32


@pytest.fixture
def serve_app_api(make_config: Callable[..., Config]) -> Iterator[Callable[..., AppApi]]:
    with app_api_servers(make_config) as start:
        yield start


@pytest.fixture
def api(serve_app_api: Callable[..., AppApi]) -> AppApi:
    return serve_app_api()


@pytest.fixture
def client(api: AppApi) -> Iterator[EnclaveClient]:
    with api.client() as c:
        yield c


def no_token_in(exc: BaseException) -> None:
    """Neither the message, the repr, the attributes nor the whole traceback quote the token."""
    text = "".join(traceback.format_exception(exc)) + repr(exc) + repr(vars(exc))
    assert TOKEN not in text and WRONG not in text


# -- storage -------------------------------------------------------------------------------------
def test_storage_round_trip(client: EnclaveClient, api: AppApi) -> None:
    etag = client.put("notes/first", b"hello")
    assert etag
    assert client.get("notes/first") == StoredObject(data=b"hello", etag=etag)
    assert b"hello" not in api.backend.objects["notes/first"]  # encrypted at rest
    client.put("notes/second", b"")
    client.put("other", b"\x00\xff")
    assert client.list() == ["notes/first", "notes/second", "other"]
    assert client.list("notes/") == ["notes/first", "notes/second"]
    assert client.get("notes/second").data == b""
    assert client.delete("notes/first") is True
    assert client.delete("notes/first") is False
    with pytest.raises(NotFound) as caught:
        client.get("notes/first")
    assert caught.value.status == 404
    assert "'notes/first'" in caught.value.description  # the runtime's own words
    assert str(caught.value).startswith("GET /v1/storage/notes/first: 404 Not found: ")


@pytest.mark.parametrize(
    "key",
    [
        "users/42/profile.json",
        "notes/my plans for 2025.txt",
        "a b/c d/e  f",
        "percent%2Fand%20codes",
        "question?mark#hash&amp=1+plus",
        "été/naïve/日本",
        "semi;colon,comma:colon@at!'()*~",
    ],
)
def test_keys_with_slashes_spaces_and_reserved_characters(client: EnclaveClient, key: str) -> None:
    etag = client.put(key, key.encode())
    assert client.get(key) == StoredObject(key.encode(), etag)
    assert client.list() == [key]
    first_segment = key.split("/")[0]
    assert client.list(first_segment) == [key]
    assert client.delete(key) and client.list() == []


def test_conditional_writes(client: EnclaveClient) -> None:
    first = client.put("counter", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed) as caught:
        client.put("counter", b"x", if_none_match=True)
    assert caught.value.status == 412
    second = client.put("counter", b"2", if_match=first)
    assert second != first
    with pytest.raises(PreconditionFailed):
        client.put("counter", b"3", if_match=first)  # a stale ETag
    with pytest.raises(PreconditionFailed):
        client.put("missing", b"3", if_match=first)
    assert client.get("counter") == StoredObject(b"2", second)
    with pytest.raises(BadRequest) as both:
        client.put("counter", b"4", if_match=second, if_none_match=True)
    assert "not both" in both.value.description
    assert client.get("counter").data == b"2"


def test_concurrent_increments_with_etags_lose_nothing(client: EnclaveClient) -> None:
    client.put("n", b"0")

    def increment(_: int) -> None:
        while True:
            current = client.get("n")
            try:
                client.put("n", str(int(current.data) + 1).encode(), if_match=current.etag)
                return
            except PreconditionFailed:
                continue

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(increment, range(40)))
    assert client.get("n").data == b"40"


# -- each error, from a real answer --------------------------------------------------------------
def test_each_error_class_from_a_real_answer(api: AppApi, client: EnclaveClient) -> None:
    raised: list[AppApiError] = []

    def expect(cls: type[AppApiError], status: int | None, call: Callable[[], object]) -> None:
        with pytest.raises(cls) as caught:
            call()
        assert type(caught.value) is cls and caught.value.status == status
        assert caught.value.description and caught.value.title
        raised.append(caught.value)

    expect(BadRequest, 400, lambda: client.get("a/../b"))
    expect(BadRequest, 400, lambda: client.put("secrets/x", b"v"))
    expect(BadRequest, 400, lambda: client.put_secret("bad name", "v"))
    expect(BadRequest, 400, lambda: client.put_secret("n", "v", env_var="ENCLAVE_X"))
    expect(BadRequest, 400, lambda: client.extend_pcr(3, b"x"))
    expect(Forbidden, 403, lambda: api.client(WRONG).list())
    expect(NotFound, 404, lambda: client.get("nothing"))
    expect(NotFound, 404, lambda: client.get_secret("nothing"))
    expect(PreconditionFailed, 412, lambda: client.put("k", b"v", if_match='"0"'))
    expect(TooLarge, 413, lambda: client.put("big", b"x" * (MAX_STORAGE_BODY + 1)))
    expect(TooLarge, 413, lambda: client.put_secret("big", "x" * MAX_JSON_BODY))
    client.lock_pcr(20)
    expect(Conflict, 409, lambda: client.extend_pcr(20, b"x"))
    expect(Conflict, 409, lambda: client.lock_pcr(20))

    # The client always sends "Bearer <token>": only a broken header reaches the 401.
    unauthenticated = api.client()
    unauthenticated._auth = "Basic " + TOKEN
    expect(Unauthorized, 401, unauthenticated.list)

    api.state.storage, api.state.stage = None, "static_secrets"
    expect(Unavailable, 503, client.list_secrets)
    assert isinstance(raised[-1], Unavailable) and raised[-1].retry_after == 1.0
    assert "still booting" in raised[-1].description

    assert api.backend.objects == {}  # no refused call stored anything
    assert all(isinstance(exc, AppApiError) for exc in raised)
    for exc in raised:
        no_token_in(exc)


def test_no_answer_is_unavailable_without_a_status() -> None:
    port = free_port()  # nothing listens there
    client = EnclaveClient(f"http://127.0.0.1:{port}", TOKEN, timeout=2)
    with pytest.raises(Unavailable) as caught:
        client.get("k")
    assert caught.value.status is None and caught.value.retry_after is None
    assert "ConnectionRefusedError" in caught.value.description
    no_token_in(caught.value)


def test_the_token_stays_out_of_reprs_and_construction_errors(api: AppApi) -> None:
    client = api.client()
    assert repr(client) == f"EnclaveClient({api.url!r})"
    with pytest.raises(ValueError) as bad_token:
        EnclaveClient(api.url, TOKEN + "\r\nX-Injected: 1")
    assert TOKEN not in str(bad_token.value)
    with pytest.raises(ValueError, match="http://host:port"):
        EnclaveClient("https://127.0.0.1:1", TOKEN)


def test_from_env(api: AppApi) -> None:
    client = EnclaveClient.from_env({"ENCLAVE_API_URL": api.url, "ENCLAVE_MGMT_TOKEN": TOKEN})
    client.put("k", b"v")
    assert client.get("k").data == b"v"
    with pytest.raises(Unavailable) as caught:
        EnclaveClient.from_env({"ENCLAVE_API_URL": api.url})
    assert caught.value.status is None and "ENCLAVE_MGMT_TOKEN" in caught.value.description


# -- secrets and PCRs ----------------------------------------------------------------------------
def test_dynamic_secrets(client: EnclaveClient) -> None:
    client.put_secret("api.token", "s3cr3t-value", env_var="API_TOKEN")
    client.put_secret("plain", "other-value")
    secret = client.get_secret("api.token")
    assert isinstance(secret, Secret)
    assert (secret.name, secret.value, secret.env_var) == ("api.token", "s3cr3t-value", "API_TOKEN")
    assert secret.created_at and secret.updated_at
    assert "s3cr3t-value" not in repr(secret)  # safe to log
    assert client.get_secret("plain").env_var is None
    listed = client.list_secrets()
    assert [(s.name, s.env_var) for s in listed] == [("api.token", "API_TOKEN"), ("plain", None)]
    assert all(type(s) is SecretInfo for s in listed)
    assert client.list() == []  # secret records are not storage keys
    client.put_secret("plain", "replaced")
    assert client.get_secret("plain").value == "replaced"
    assert client.delete_secret("plain") is True
    assert client.delete_secret("plain") is False
    assert [s.name for s in client.list_secrets()] == ["api.token"]


def test_pcrs(client: EnclaveClient, api: AppApi) -> None:
    value = client.extend_pcr(16, b"app config v1")
    assert len(value) == 48
    assert isinstance(api.state.attestation, MemoryNsm)
    assert api.state.attestation.pcrs[16] == value
    assert client.extend_pcr(16, b"more") != value
    client.lock_pcr(16)
    with pytest.raises(Conflict):
        client.extend_pcr(16, b"late")


# -- connections ---------------------------------------------------------------------------------
def test_one_kept_alive_connection_per_thread(client: EnclaveClient) -> None:
    client.put("k", b"v")
    first = client._local.conn
    assert first is not None and first.sock is not None
    for _ in range(20):
        client.get("k")
    assert client._local.conn is first  # the same connection every time
    with pytest.raises(NotFound):
        client.get("missing")  # an error answer keeps the connection too
    assert client._local.conn is first

    seen: set[int] = set()
    lock = threading.Lock()

    def work(i: int) -> None:
        for _ in range(10):
            client.put(f"t/{i}", str(i).encode())
            assert client.get(f"t/{i}").data == str(i).encode()
        with lock:
            seen.add(id(client._local.conn))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(seen) == 6
    assert len(client.list("t/")) == 6
    assert len(client._connections) <= 7  # this thread's and the six others (or fewer: GC)
    client.close()
    assert len(client._connections) == 0
    assert client.get("k").data == b"v"  # a new connection after close


def test_a_connection_the_runtime_closed_is_replaced(serve_app_api: Callable[..., AppApi]) -> None:
    api = serve_app_api(idle_timeout_s=0.2)
    client = api.client()
    client.put("k", b"v")
    stale = client._local.conn
    time.sleep(0.6)  # the runtime closes the idle connection
    assert client.get("k").data == b"v"
    assert client._local.conn is not stale
    nsm = api.state.attestation
    assert isinstance(nsm, MemoryNsm)
    before = nsm.pcrs[17]
    time.sleep(0.6)
    value = client.extend_pcr(17, b"once")  # a POST too: on a new connection, sent once
    assert value == nsm.pcrs[17] == hashlib.sha384(before + b"once").digest()


def test_a_forked_process_opens_its_own_connection(client: EnclaveClient) -> None:
    client.put("k", b"v")
    inherited = client._local.conn
    client._local.pid = -1  # as in a gunicorn worker forked after the parent used the client
    assert client.get("k").data == b"v"
    assert client._local.conn is not inherited
    assert inherited is not None and inherited.sock is not None  # the parent's, left alone
