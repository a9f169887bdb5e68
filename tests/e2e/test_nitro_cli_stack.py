"""End to end through the nitro-cli launcher: `enclave dev` drives the fake `nitro-cli` on PATH.

The fake starts the real runtime (and so the app) as a detached process, the way nitro-cli starts
an enclave; its listeners are loopback TCP ports, reached through ``address_override``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.host_tools import (
    describe_enclaves,
    fake_nitro_env,
    fake_state,
    kill_fake_enclaves,
)
from tests.e2e.stack import DevStack, http, make_stack, processes_mentioning
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

CID = 23


def nitro_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, eif: Path) -> DevStack:
    """An example-app stack whose launcher is nitro-cli, with the fake first on PATH."""
    folder = tmp_path / "hello"
    env = fake_nitro_env(tmp_path)
    env["FAKE_NITRO_CLI_CONFIG"] = str(folder / "enclave.yaml")
    monkeypatch.delenv("FAKE_NITRO_CLI_COMMAND", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # inherited by `enclave dev`, then by nitro-cli
    return make_stack(
        folder,
        enclave={"eif": str(eif), "cid": CID, "cpu_count": 2, "memory_mib": 1024},
        launcher={"backend": "nitro-cli", "options": {"address_override": "tcp://127.0.0.1"}},
    )


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DevStack]:
    eif = tmp_path / "image.eif"  # beside the app folder: the simulated PCR0 measures that one
    eif.write_bytes(b"placeholder EIF: the fake nitro-cli runs the runtime instead")
    try:
        yield from nitro_stack(tmp_path, monkeypatch, eif).running()
    finally:
        kill_fake_enclaves(tmp_path)


def status(stack: DevStack) -> dict[str, Any]:
    done = stack.cli("status", "-f", "json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def gone(pid: int) -> bool:
    path = Path(f"/proc/{pid}/stat")
    return not path.exists() or path.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_the_stack_runs_restarts_and_stops_through_nitro_cli(
    stack: DevStack, tmp_path: Path
) -> None:
    env = fake_nitro_env(tmp_path)
    assert "Hello from Simple Enclave" in stack.greeting()  # ingress -> runtime -> app

    [enclave] = describe_enclaves(env)
    shown = status(stack)
    assert shown["status"] == "running" and shown["restarts"] == 0
    assert (shown["enclave_id"], shown["enclave_cid"]) == (enclave["EnclaveID"], CID)
    assert (enclave["EnclaveName"], enclave["EnclaveCID"], enclave["State"]) == (
        "hello",
        CID,
        "RUNNING",
    )
    runs = [c for c in fake_state(tmp_path)["calls"] if c[0] == "run-enclave"]
    assert runs == [
        [
            "run-enclave",
            "--cpu-count",
            "2",
            "--memory",
            "1024",
            "--eif-path",
            str(tmp_path / "image.eif"),
        ]
        + ["--enclave-cid", str(CID), "--enclave-name", "hello"]
    ]
    runtime = enclave["ProcessID"]
    assert "runtime" in cmdline(runtime) and str(stack.config_path) in cmdline(runtime)

    os.kill(runtime, signal.SIGKILL)  # the "enclave" dies: describe-enclaves stops listing it
    health = wait_for(lambda: (h := stack.health())["restarts"] == 1 and h, timeout=60)
    assert health["last_exit"]["reason"].startswith(f"enclave {enclave['EnclaveID']} is gone")
    assert (health["last_exit"]["exit_code"], health["last_exit"]["signal"]) == (None, None)
    wait_for(lambda: "Hello" in stack.greeting(), timeout=60)
    [restarted] = describe_enclaves(env)
    assert restarted["EnclaveID"] != enclave["EnclaveID"]
    assert restarted["ProcessID"] != runtime and restarted["EnclaveCID"] == CID
    assert len([c for c in fake_state(tmp_path)["calls"] if c[0] == "run-enclave"]) == 2
    shown = status(stack)
    assert (shown["status"], shown["enclave_id"], shown["restarts"]) == (
        "running",
        restarted["EnclaveID"],
        1,
    )

    assert stack.stop() < 10
    assert stack.process is not None and stack.process.returncode == 0
    assert gone(restarted["ProcessID"])
    assert describe_enclaves(env) == []
    assert [c[:2] for c in fake_state(tmp_path)["calls"] if c[0] == "terminate-enclave"] == [
        ["terminate-enclave", "--enclave-id"]
    ]
    assert processes_mentioning(str(stack.folder)) == []


def test_a_missing_eif_is_reported_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such.eif"
    dev = nitro_stack(tmp_path, monkeypatch, missing)
    err = (tmp_path / "dev-stderr.log").open("ab")
    dev.process = subprocess.Popen(
        [sys.executable, "-m", "enclave_core.cli.main", "dev", "-c", str(dev.config_path)],
        cwd=dev.folder,
        stdout=err,
        stderr=err,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    err.close()
    try:
        health = wait_for(lambda: (h := dev.health())["status"] == "error" and h, timeout=60)
        assert f"no EIF at {missing}: run `enclave build` or fix enclave.eif" in health["error"]
        assert "[ E19 ]" in health["error"]
        status, _, _ = http("GET", dev.supervisor_url + "/health")
        assert status == 503
    finally:
        dev.stop()
        dev.kill_leftovers()
