"""Tests for the ``local`` secrets backend: one JSON file, locked and atomic."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from enclave_plugins.local_secrets import LocalSecrets

from enclave_core.errors import BackendError, ValidationError
from enclave_core.plugin.interfaces import Secrets
from enclave_core.plugin.manager import get_plugin_manager
from tests.helpers import backend_context

CHILD = """
import sys, time
from pathlib import Path
from enclave_plugins.local_secrets import LocalSecrets

path, go, tag, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
store = LocalSecrets(path, prefix="dev", app_name="hello")
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
for i in range(count):
    store.put(f"{tag}/n{i}/Ciphertext", f"{tag}-{i}")
print("done")
"""


@pytest.fixture
def store(tmp_path: Path) -> LocalSecrets:
    return LocalSecrets(tmp_path / ".enclave" / "secrets.json", prefix="dev", app_name="hello")


def test_put_get_uses_full_parameter_names_in_the_file(store: LocalSecrets) -> None:
    store.put("KMSKeyID", "1234abcd-key")
    store.put("signing_key/Ciphertext", "YmxvYg==")
    assert store.get("KMSKeyID") == "1234abcd-key"
    assert json.loads(store.path.read_text()) == {
        "/dev/hello/KMSKeyID": "1234abcd-key",
        "/dev/hello/signing_key/Ciphertext": "YmxvYg==",
    }
    assert isinstance(store, Secrets)


def test_missing_parameter_is_none_and_delete_reports_existence(store: LocalSecrets) -> None:
    assert store.get("KMSKeyID") is None
    assert store.delete("KMSKeyID") is False
    store.put("KMSKeyID", "k")
    store.put("KMSKeyID", "k2")
    assert store.get("KMSKeyID") == "k2"
    assert store.delete("KMSKeyID") is True
    assert store.get("KMSKeyID") is None
    assert json.loads(store.path.read_text()) == {}


def test_list_is_relative_sorted_and_scoped_to_the_app(store: LocalSecrets) -> None:
    other = LocalSecrets(store.path, prefix="dev", app_name="other")
    other.put("KMSKeyID", "theirs")
    for name in ["StorageDEK/Ciphertext", "KMSKeyID", "b/Ciphertext", "Migration/Checkpoint"]:
        store.put(name, "v")
    assert store.list() == [
        "KMSKeyID",
        "Migration/Checkpoint",
        "StorageDEK/Ciphertext",
        "b/Ciphertext",
    ]
    assert store.list("Migration") == ["Migration/Checkpoint"]
    assert other.list() == ["KMSKeyID"]
    assert store.get("KMSKeyID") == "v" and other.get("KMSKeyID") == "theirs"


def test_file_is_private(store: LocalSecrets) -> None:
    store.put("KMSKeyID", "k")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in store.path.parent.iterdir()) == [
        "secrets.json",
        "secrets.json.lock",
    ]


@pytest.mark.parametrize("name", ["", "/abs", "a//b", "../x", "a/../b", "sp ace", "a/", "x" * 1100])
def test_invalid_names_are_refused(store: LocalSecrets, name: str) -> None:
    with pytest.raises(ValidationError):
        store.put(name, "v")
    with pytest.raises(ValidationError):
        store.get(name)
    assert not store.path.exists()


def test_non_string_value_is_refused(store: LocalSecrets) -> None:
    with pytest.raises(ValidationError, match="must be a string"):
        store.put("KMSKeyID", b"bytes")


@pytest.mark.parametrize(
    "content", [b"{not json", b"\xff\xfe", b'["a list"]', b'{"/dev/hello/x": 1}']
)
def test_corrupted_file_is_an_error_and_is_left_alone(store: LocalSecrets, content: bytes) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(content)
    with pytest.raises(BackendError, match="corrupted"):
        store.get("KMSKeyID")
    with pytest.raises(BackendError, match="corrupted"):
        store.put("KMSKeyID", "new")
    with pytest.raises(BackendError, match="corrupted"):
        store.list()
    assert store.path.read_bytes() == content


def test_concurrent_threads_lose_no_write(store: LocalSecrets) -> None:
    barrier = threading.Barrier(6)

    def writer(t: int) -> None:
        barrier.wait()
        for i in range(10):
            store.put(f"t{t}/n{i}", f"{t}-{i}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = store.list()
    assert len(names) == 60
    assert all(store.get(f"t{t}/n{i}") == f"{t}-{i}" for t in range(6) for i in range(10))


def test_concurrent_processes_lose_no_write(store: LocalSecrets, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(store.path), str(go), f"p{p}", "15"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(4)
    ]
    time.sleep(0.5)  # the interpreters start, then all write at once
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == "done"
    expected = {f"p{p}/n{i}/Ciphertext": f"p{p}-{i}" for p in range(4) for i in range(15)}
    assert store.list() == sorted(expected)
    assert {name: store.get(name) for name in expected} == expected


def test_from_options_resolves_path_and_prefix(tmp_path: Path) -> None:
    options = LocalSecrets.Options().load({})
    assert options == {"path": ".enclave/secrets.json"}
    context = backend_context(tmp_path, name="app1", prefix="prod")
    backend = LocalSecrets.from_options(options, context)
    backend.put("KMSKeyID", "k")
    assert json.loads((tmp_path / ".enclave" / "secrets.json").read_text()) == {
        "/prod/app1/KMSKeyID": "k"
    }


def test_hook_enclave_register_secrets() -> None:
    plugins = get_plugin_manager()
    assert plugins.secrets.get("local") is LocalSecrets
    assert plugins.secrets.owner("local") == "local-secrets"
