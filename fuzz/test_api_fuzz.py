"""Schemathesis against every listener of `enclave dev`, with the listeners' tokens.

Each operation of each document gets the examples, coverage and fuzzing phases (positive and
negative inputs); every response is checked by :class:`fuzz.runner.Fuzzer`. The first tests show
that the stored-state check sees a change it did not allow, so a green run means something.
"""

from __future__ import annotations

import schemathesis
from schemathesis import Case

from fuzz.harness import FuzzStack
from fuzz.runner import Fuzzer
from fuzz.state import NO_WRITE, SECRET_ITEM, STORAGE_ITEM, allowed_write, violations

SELFTEST_KEY = "fuzz-selftest/object"
SELFTEST_SECRET = "fuzz-selftest"  # noqa: S105 - a name


def _put(stack: FuzzStack, path: str, body: bytes) -> int:
    response = stack.session.put(
        stack.app_api_url + path, data=body, headers=stack.headers_for("app-api"), timeout=10
    )
    return response.status_code


def _delete(stack: FuzzStack, path: str) -> int:
    response = stack.session.delete(
        stack.app_api_url + path, headers=stack.headers_for("app-api"), timeout=10
    )
    return response.status_code


def test_snapshot_is_stable(fuzz_stack: FuzzStack) -> None:
    """With no request in between, two snapshots are equal (nothing writes in the background)."""
    first = fuzz_stack.snapshot()
    assert violations(first, fuzz_stack.snapshot(), NO_WRITE) == []
    assert "object:visits" in first and "param:/dev/hello/KMSKeyID" in first
    assert first["static:APP_SIGNING_KEY"] != "absent"


def test_state_check_sees_object_changes(fuzz_stack: FuzzStack) -> None:
    """An object written or deleted behind the check's back is reported; the named one allowed."""
    before = fuzz_stack.snapshot()
    assert _put(fuzz_stack, f"/v1/storage/{SELFTEST_KEY}", b"one") == 201
    written = fuzz_stack.snapshot()
    assert violations(before, written, NO_WRITE) == [
        f"listed:{SELFTEST_KEY} added",
        f"object:{SELFTEST_KEY} added",
    ]
    put = allowed_write("PUT", STORAGE_ITEM, {"key": SELFTEST_KEY}, 201)
    assert violations(before, written, put) == []
    assert violations(before, written, allowed_write("PUT", STORAGE_ITEM, {"key": "x"}, 201)) == [
        f"listed:{SELFTEST_KEY} added",
        "listed:x missing after a successful PUT",
        f"object:{SELFTEST_KEY} added",
        "object:x missing after a successful PUT",
    ]
    assert _put(fuzz_stack, f"/v1/storage/{SELFTEST_KEY}", b"two") == 201
    rewritten = fuzz_stack.snapshot()
    assert violations(written, rewritten, NO_WRITE) == [f"object:{SELFTEST_KEY} modified"]
    assert _delete(fuzz_stack, f"/v1/storage/{SELFTEST_KEY}") == 200
    deleted = fuzz_stack.snapshot()
    assert violations(rewritten, deleted, put) == [
        f"listed:{SELFTEST_KEY} missing after a successful PUT",
        f"object:{SELFTEST_KEY} missing after a successful PUT",
    ]
    delete = allowed_write("DELETE", STORAGE_ITEM, {"key": SELFTEST_KEY}, 200)
    assert violations(rewritten, deleted, delete) == []
    assert violations(before, deleted, NO_WRITE) == []


def test_state_check_sees_secret_changes(fuzz_stack: FuzzStack) -> None:
    """A dynamic secret created behind the check's back is reported, by name and never by value."""
    before = fuzz_stack.snapshot()
    path = f"/v1/secrets/{SELFTEST_SECRET}"
    assert _put(fuzz_stack, path, b'{"value": "not-in-any-message"}') == 201
    after = fuzz_stack.snapshot()
    problems = violations(before, after, NO_WRITE)
    assert problems == [f"secret-meta:{SELFTEST_SECRET} added", f"secret:{SELFTEST_SECRET} added"]
    assert "not-in-any-message" not in repr(after)
    put = allowed_write("PUT", SECRET_ITEM, {"name": SELFTEST_SECRET}, 201)
    assert violations(before, after, put) == []
    assert _delete(fuzz_stack, path) == 200
    assert violations(before, fuzz_stack.snapshot(), NO_WRITE) == []


# schemathesis leaves out the operation that served the schema (GET /openapi.json) unless a filter
# names it; each document describes its own /openapi.json (the public one with a signature nonce
# header), so every path is included explicitly.
EVERY_PATH = "^/"
public = schemathesis.pytest.from_fixture("public_schema").include(path_regex=EVERY_PATH)
app_api = schemathesis.pytest.from_fixture("app_api_schema").include(path_regex=EVERY_PATH)
control = schemathesis.pytest.from_fixture("control_schema").include(path_regex=EVERY_PATH)
supervisor = schemathesis.pytest.from_fixture("supervisor_schema").include(path_regex=EVERY_PATH)


@public.parametrize()
def test_public_listener(case: Case, fuzzer: Fuzzer) -> None:
    """The runtime's public listener: health, enclave-info, attestation, its document."""
    fuzzer.run(case, "public")


@app_api.parametrize()
def test_app_api(case: Case, fuzzer: Fuzzer) -> None:
    """The runtime's app API: storage, dynamic secrets, PCRs."""
    fuzzer.run(case, "app-api")


@control.parametrize()
def test_control_listener(case: Case, fuzzer: Fuzzer) -> None:
    """The runtime's control listener: health, migration-key and export-key."""
    fuzzer.run(case, "control")


@supervisor.parametrize()
def test_supervisor_api(case: Case, fuzzer: Fuzzer) -> None:
    """The supervisor's management API; a successful POST /v1/stop is followed by a restart."""
    fuzzer.run(case, "supervisor")
