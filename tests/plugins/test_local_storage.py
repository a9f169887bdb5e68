"""Tests for the ``local`` storage backend: real files, real threads and real processes."""

from __future__ import annotations

import hashlib
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import marshmallow
import pytest
from enclave_plugins.local_storage import LocalStorage, etag_of

from enclave_core.errors import NotFound, PreconditionFailed, ValidationError
from enclave_core.plugin.interfaces import Storage
from enclave_core.plugin.manager import get_plugin_manager
from tests.helpers import backend_context

# A child process: wait for the go file, then try one conditional write (or a counter loop).
CHILD = """
import sys, time
from pathlib import Path
from enclave_core.errors import PreconditionFailed
from enclave_plugins.local_storage import LocalStorage

root, go, mode, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
rounds = int(sys.argv[5])
store = LocalStorage(root)
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
if mode == "create":
    try:
        store.put("race/winner", tag.encode(), if_none_match=True)
        print("won")
    except PreconditionFailed:
        print("lost")
else:
    for _ in range(rounds):
        while True:
            current = store.get("counter")
            try:
                store.put("counter", str(int(current.data) + 1).encode(), if_match=current.etag)
                break
            except PreconditionFailed:
                continue
    print("done")
"""


def _children(root: Path, tmp_path: Path, mode: str, count: int, rounds: int = 0) -> list[str]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(go), mode, f"p{i}", str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    time.sleep(0.5)  # let the interpreters start so they race on the write, not on imports
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.strip())
    return outputs


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


def test_put_get_roundtrip_with_etag(store: LocalStorage) -> None:
    etag = store.put("notes/today", b"ciphertext bytes")
    expected = '"' + hashlib.sha256(b"ciphertext bytes").hexdigest()[:32] + '"'
    assert etag == expected == etag_of(b"ciphertext bytes")
    obj = store.get("notes/today")
    assert (obj.data, obj.etag) == (b"ciphertext bytes", expected)
    assert isinstance(store, Storage)


def test_overwrite_changes_data_and_etag(store: LocalStorage) -> None:
    first = store.put("k", b"one")
    second = store.put("k", b"two")
    assert first != second
    assert store.get("k").data == b"two"


def test_get_missing_raises_not_found(store: LocalStorage) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        store.get("nope")
    store.put("a/b", b"x")
    with pytest.raises(NotFound):
        store.get("a")  # a prefix is not an object


def test_delete_reports_existence_and_cleans_empty_folders(store: LocalStorage) -> None:
    store.put("deep/er/key", b"x")
    assert store.delete("deep/er/key") is True
    assert store.delete("deep/er/key") is False
    assert store.list() == []
    assert [p.name for p in store.root.iterdir()] == ["#lock"]


def test_list_by_prefix_sorted_and_object_beside_prefix(store: LocalStorage) -> None:
    for key in ["b", "a/2", "a/1", "a", "a b/c", "secrets/x", "ab"]:
        store.put(key, key.encode())
    assert store.list() == ["a", "a b/c", "a/1", "a/2", "ab", "b", "secrets/x"]
    assert store.list("a/") == ["a/1", "a/2"]
    assert store.list("a") == ["a", "a b/c", "a/1", "a/2", "ab"]
    assert store.list("zzz") == []
    # "a" and "a/1" coexist with their own contents
    assert store.get("a").data == b"a" and store.get("a/1").data == b"a/1"


def test_list_ignores_lock_and_temp_files(store: LocalStorage) -> None:
    store.put("x", b"1")
    (store.root / "#tmp-leftover").write_bytes(b"junk")
    assert store.list() == ["x"]


def test_list_on_missing_directory_is_empty(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path / "never").list() == []


@pytest.mark.parametrize(
    "key", ["", "/abs", "../escape", "a/../../x", "a//b", "a/./b", "a/", "a\x00b"]
)
def test_unsafe_keys_are_refused_and_nothing_is_written(store: LocalStorage, key: str) -> None:
    with pytest.raises(ValidationError):
        store.put(key, b"x")
    with pytest.raises(ValidationError):
        store.get(key)
    outside = store.root.parent
    assert sorted(p.name for p in outside.iterdir()) in ([], ["storage"])
    assert store.list() == []


def test_a_key_longer_than_the_filesystem_allows_is_refused(store: LocalStorage) -> None:
    key = "dir/" + "\U0001f600" * 500  # 6,000 bytes percent-encoded: past PATH_MAX (4,096)
    with pytest.raises(ValidationError, match="cannot be stored"):
        store.put(key, b"x")
    with pytest.raises(NotFound):
        store.get(key)
    assert store.delete(key) is False
    assert store.delete("\U0001f600" * 500) is False
    assert store.list() == []


def test_if_none_match_refuses_existing_and_changes_nothing(store: LocalStorage) -> None:
    etag = store.put("once", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed, match="already exists"):
        store.put("once", b"second", if_none_match=True)
    assert store.get("once") == store.get("once")
    assert (store.get("once").data, store.get("once").etag) == (b"first", etag)


def test_if_match_stale_etag_fails_and_changes_nothing(store: LocalStorage) -> None:
    old = store.put("doc", b"v1")
    new = store.put("doc", b"v2", if_match=old)
    with pytest.raises(PreconditionFailed, match="changed"):
        store.put("doc", b"v3", if_match=old)
    assert (store.get("doc").data, store.get("doc").etag) == (b"v2", new)
    # unquoted and weak forms of the current ETag match; '*' means "exists"
    store.put("doc", b"v4", if_match=new.strip('"'))
    store.put("doc", b"v5", if_match="W/" + etag_of(b"v4"))
    store.put("doc", b"v6", if_match="*")
    assert store.get("doc").data == b"v6"


def test_if_match_on_missing_object_fails(store: LocalStorage) -> None:
    with pytest.raises(PreconditionFailed, match="does not exist"):
        store.put("ghost", b"x", if_match="*")
    assert store.list() == []


def test_modes_are_private(store: LocalStorage) -> None:
    store.put("a/b/c", b"x")
    for path in [store.root, store.root / "a%2F", store.root / "a%2F" / "b%2F"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE((store.root / "a%2F" / "b%2F" / "c").stat().st_mode) == 0o600


def test_stored_bytes_are_exactly_what_was_put(store: LocalStorage) -> None:
    data = bytes(range(256)) * 40
    store.put("bin/blob", data)
    assert (store.root / "bin%2F" / "blob").read_bytes() == data


def test_concurrent_if_none_match_threads_have_one_winner(store: LocalStorage) -> None:
    barrier = threading.Barrier(8)
    results: list[str] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.put("race", f"t{i}".encode(), if_none_match=True)
            results.append(f"t{i}")
        except PreconditionFailed:
            results.append("lost")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r != "lost"]
    assert len(results) == 8 and len(winners) == 1
    assert store.get("race").data == winners[0].encode()


def test_concurrent_if_none_match_processes_have_one_winner(
    store: LocalStorage, tmp_path: Path
) -> None:
    outputs = _children(store.root, tmp_path, "create", 4)
    assert sorted(outputs) == ["lost", "lost", "lost", "won"]
    assert store.get("race/winner").data in {b"p0", b"p1", b"p2", b"p3"}


def test_if_match_counter_loses_no_update_across_processes(
    store: LocalStorage, tmp_path: Path
) -> None:
    store.put("counter", b"0")
    assert _children(store.root, tmp_path, "count", 3, rounds=15) == ["done"] * 3
    assert store.get("counter").data == b"45"


def test_from_options_resolves_path_against_config_folder(tmp_path: Path) -> None:
    options = LocalStorage.Options().load({})
    assert options == {"path": ".enclave/storage"}
    context = backend_context(tmp_path)
    backend = LocalStorage.from_options(options, context)
    assert backend.root == tmp_path / ".enclave" / "storage"
    with pytest.raises(marshmallow.ValidationError, match="Unknown field"):
        LocalStorage.Options().load({"bukcet": "x"})


def test_hook_enclave_register_storage() -> None:
    plugins = get_plugin_manager()
    assert plugins.storage.get("local") is LocalStorage
    assert plugins.storage.owner("local") == "local-storage"
    assert {"capability": "storage", "name": "local"}.items() <= next(
        row for row in plugins.backends() if row["plugin"] == "local-storage"
    ).items()


def test_segments_longer_than_a_file_name_round_trip_and_list(store: LocalStorage) -> None:
    long_dir = "é" * 200  # 1,200 bytes percent-encoded: five pieces
    long_name = "x" * 300
    keys = [f"{long_dir}/{long_name}", f"{long_dir}/short", f"a/{long_name}", "a/b"]
    for key in keys:
        store.put(key, key.encode())
    assert [store.get(key).data for key in keys] == [key.encode() for key in keys]
    assert store.list() == sorted(keys)
    assert store.list(long_dir) == sorted(keys[:2])
    assert all(len(part.encode()) <= 255 for path in store.root.rglob("*") for part in path.parts)
    assert store.delete(keys[0]) is True
    assert store.list() == sorted(keys[1:])


def test_a_segment_that_fits_one_name_keeps_the_layout_it_always_had(store: LocalStorage) -> None:
    fits = "d" * 252  # 252 + the 3 of "%2F" = 255: one folder, as before pieces existed
    store.put(f"{fits}/k", b"v")
    assert (store.root / f"{fits}%2F" / "k").read_bytes() == b"v"
    longest_file = "f" * 255
    store.put(longest_file, b"w")
    assert (store.root / longest_file).read_bytes() == b"w"
