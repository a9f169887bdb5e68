"""End to end: `enclave init --template falcon`, then `enclave dev` runs it with gunicorn.

The files are exactly what `enclave init` writes; only the ports in enclave.yaml are moved to free
ones. Through the ingress (TLS), a note makes a storage round trip with its ETag, a stale ETag
gets the app's 412, and the static secret is reported present without being shown; gunicorn runs
one worker per `enclave.cpu_count`, and its JSON access log lines reach .enclave/logs/runtime.log.

The app's command is ``python3 -m gunicorn ...``: the ``python3`` first on PATH must have this
project and gunicorn installed (its virtualenv's ``bin`` first on PATH).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from enclave_core.testing import dev_config_document
from tests.e2e.stack import DevStack, http, proc_children, read_environ
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

RUNTIME_LOG = Path(".enclave") / "logs" / "runtime.log"


def init_falcon(folder: Path) -> DevStack:
    """`enclave init --template falcon folder`, then the same enclave.yaml on free ports."""
    result = subprocess.run(
        [sys.executable, "-m", "enclave_core.cli.main", "init", str(folder), "-t", "falcon"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load((folder / "enclave.yaml").read_text())
    free = dev_config_document()
    document["runtime"].update(
        {k: free["runtime"][k] for k in ("port", "app_api_port", "control_port")}
    )
    document["app"]["port"] = free["app"]["port"]
    document["supervisor"].update(listen=free["supervisor"]["listen"])
    document["supervisor"]["ingress"] = free["supervisor"]["ingress"]
    document["supervisor"]["watchdog"].update(free["supervisor"]["watchdog"])
    document["egress"].update(free["egress"])
    (folder / "enclave.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return DevStack(folder=folder, document=document)


def python3_can_run_gunicorn() -> None:
    """The app's `python3` must import the project and gunicorn; say how to fix it if not."""
    python3 = shutil.which("python3")
    check = [str(python3), "-c", "import enclave_core.appclient, gunicorn, falcon"]
    ok = python3 is not None and subprocess.run(check, capture_output=True, check=False).returncode
    assert ok == 0, (
        f"python3 on PATH ({python3}) cannot import enclave_core, gunicorn and falcon: "
        "put the project's virtualenv first on PATH"
    )


@pytest.fixture
def stack(base: Path) -> Iterator[DevStack]:
    python3_can_run_gunicorn()
    dev = init_falcon(base / "notes")
    try:
        dev.start()
    except AssertionError as exc:
        logs = [dev.stderr_path, dev.folder / RUNTIME_LOG]
        tails = [f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in logs if p.exists()]
        raise AssertionError("\n".join([str(exc), *tails])) from exc
    try:
        yield dev
    finally:
        dev.stop()
        dev.kill_leftovers()


def request(method: str, url: str, body: bytes | None = None, **headers: str) -> Any:
    """One request: status, headers (lower-case names: Falcon's), body."""
    status, answer, data = http(
        method, url, body, {k.replace("_", "-"): v for k, v in headers.items()}
    )
    return status, {k.lower(): v for k, v in answer.items()}, data


def gunicorn_master(stack: DevStack) -> int:
    """The runtime's child: gunicorn's master process."""
    runtime = stack.runtime_pid()
    for pid in proc_children(runtime):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"gunicorn" in cmd and b"app:app" in cmd:
            return pid
    raise AssertionError("gunicorn is not the runtime's child")


def access_records(stack: DevStack) -> list[dict[str, Any]]:
    """gunicorn's access log lines found in runtime.log (each a JSON object in an app line)."""
    found = []
    for line in (stack.folder / RUNTIME_LOG).read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            record = json.loads(entry.get("msg") or entry["message"])  # the app's line, as it was
        except (ValueError, KeyError, TypeError):
            continue
        if entry.get("source") == "app" and isinstance(record, dict) and record.get("type"):
            found.append({**record, "stream": entry.get("stream")})
    return found


def test_notes_secret_and_access_logs_through_the_ingress(stack: DevStack) -> None:
    url = stack.ingress_url
    assert url.startswith("https://")  # the template's runtime.tls: true
    status, _, body = http("GET", url + "/")
    assert (status, body) == (200, b"Hello from Simple Enclave and Falcon!\n")

    # A storage round trip with ETags, through the app and the client.
    status, headers, body = request("PUT", url + "/notes/first", b"v1", If_None_Match="*")
    assert status == 201, body
    etag = headers["etag"]
    status, headers, body = request("GET", url + "/notes/first")
    assert (status, body, headers["etag"]) == (200, b"v1", etag)
    status, headers, _ = request("PUT", url + "/notes/first", b"v2", If_Match=etag)
    assert status == 201 and headers["etag"] != etag
    status, _, body = request("PUT", url + "/notes/first", b"v3", If_Match=etag)  # stale
    assert status == 412
    assert json.loads(body)["title"] == "412 Precondition Failed"
    assert request("GET", url + "/notes/first")[2] == b"v2"
    status, _, body = request("GET", url + "/notes")
    assert (status, json.loads(body)) == (200, {"notes": ["first"]})

    # The static secret reached gunicorn's workers, and stays unseen.
    master = gunicorn_master(stack)
    secret = read_environ(master)["APP_SIGNING_KEY"]
    status, _, body = http("GET", url + "/secret")
    assert (status, json.loads(body)) == (200, {"secret_present": True, "length": 64})
    assert secret.encode() not in body

    # One worker per enclave CPU: the runtime told gunicorn enclave.cpu_count.
    cpus = stack.document["enclave"]["cpu_count"]
    assert read_environ(master)["ENCLAVE_CPU_COUNT"] == str(cpus)
    assert len(proc_children(master)) == cpus

    # gunicorn's access log: JSON lines on stdout, relayed into the runtime's log.
    def logged() -> list[dict[str, Any]]:
        records = access_records(stack)
        return records if any(r["status"] == 412 for r in records) else []

    records = wait_for(logged, timeout=15)
    notes = [(r["method"], r["status"]) for r in records if r["path"] == "/notes/first"]
    assert notes == [("PUT", 201), ("GET", 200), ("PUT", 201), ("PUT", 412), ("GET", 200)]
    assert all(r["stream"] == "stdout" and r["duration_ms"] >= 0 for r in records)
    assert all(r["client"] == "127.0.0.1" for r in records)
    text = (stack.folder / RUNTIME_LOG).read_text(errors="replace")
    assert secret not in text and read_environ(master)["ENCLAVE_MGMT_TOKEN"] not in text

    # SIGTERM: gunicorn stops its workers gracefully, within the runtime's window.
    assert stack.stop() < 10
    wait_for(lambda: "Shutting down: Master" in (stack.folder / RUNTIME_LOG).read_text(), 5)
