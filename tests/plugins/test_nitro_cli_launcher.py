"""The nitro-cli launcher against the fake ``nitro-cli`` on PATH (tests/doubles/tools/nitro-cli).

The fake keeps its own state file, prints nitro-cli's JSON and ``[ Exx ]`` errors, and starts a
small script (FAKE_NITRO_CLI_COMMAND) as the "enclave" process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import marshmallow
import pytest
from enclave_plugins.nitro_cli_launcher import (
    NOT_FOUND,
    NitroCliLauncher,
    nitro_cli_error,
    parse_description,
    parse_json,
)

from enclave_core.errors import LauncherError
from enclave_core.plugin.backends import build_backend
from enclave_core.plugin.interfaces import EnclaveDescription, Launcher, LaunchSpec
from enclave_core.plugin.manager import get_plugin_manager
from tests.doubles.host_tools import (
    NITRO_CLI,
    describe_enclaves,
    fake_nitro_env,
    fake_state,
    kill_fake_enclaves,
)
from tests.e2e.stack import processes_mentioning
from tests.helpers import alive, wait_for

# The "enclave": numbered lines, then "ready", then sleep until killed.
ENCLAVE_SCRIPT = textwrap.dedent(
    """
    import time
    for i in range(30):
        print(f"line {i}", flush=True)
    print("ready", flush=True)
    time.sleep(600)
    """
)


class Fake:
    """The fake nitro-cli's environment in a temporary folder, and a launcher using it."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = tmp_path
        self.monkeypatch = monkeypatch
        self.env = fake_nitro_env(tmp_path)
        script = tmp_path / "enclave.py"
        script.write_text(ENCLAVE_SCRIPT)
        self.env["FAKE_NITRO_CLI_COMMAND"] = json.dumps([sys.executable, str(script)])
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        self.eif = tmp_path / "image.eif"
        self.eif.write_bytes(b"placeholder EIF")
        self.logs = Path(self.env["NITRO_CLI_LOGS_PATH"])

    def launcher(self, **options: Any) -> NitroCliLauncher:
        options.setdefault("log_dir", self.logs)
        return NitroCliLauncher(enclave_name="hello", **options)

    def spec(self, **changes: Any) -> LaunchSpec:
        values: dict[str, Any] = {
            "config_path": self.folder / "enclave.yaml",
            "cpu_count": 2,
            "memory_mib": 512,
            "cid": 21,
            "eif": self.eif,
            "debug_mode": False,
            "name": "hello",
        }
        values.update(changes)
        return LaunchSpec(**values)

    def calls(self, command: str) -> list[list[str]]:
        return [c for c in fake_state(self.folder)["calls"] if c and c[0] == command]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    fx = Fake(tmp_path, monkeypatch)
    yield fx
    kill_fake_enclaves(tmp_path)


def test_hook_registers_the_backend_built_from_enclave_yaml(
    fake: Fake, make_config: Callable[..., Any]
) -> None:
    config = make_config(
        launcher={
            "backend": "nitro-cli",
            "options": {"address_override": "tcp://127.0.0.1", "console_lines": 5},
        }
    )
    launcher = build_backend(config, get_plugin_manager(), "launcher")
    assert isinstance(launcher, NitroCliLauncher) and isinstance(launcher, Launcher)
    assert launcher.enclave_address(7073) == "tcp://127.0.0.1:7073"
    schema = NitroCliLauncher.Options()
    with pytest.raises(marshmallow.ValidationError):
        schema.load({"address_override": "tcp://127.0.0.1:80"})
    with pytest.raises(marshmallow.ValidationError):
        schema.load({"bianry": "nitro-cli"})
    assert schema.load({})["log_dir"] == "/var/log/nitro_enclaves"


def test_start_sends_the_exact_argument_list_and_parses_the_answer(fake: Fake) -> None:
    launcher = fake.launcher()
    assert launcher.enclave_address(7073) == "vsock://16:7073"  # nothing started yet
    desc = launcher.start(fake.spec())
    assert fake.calls("run-enclave") == [
        [
            "run-enclave",
            *("--cpu-count", "2", "--memory", "512", "--eif-path", str(fake.eif)),
            *("--enclave-cid", "21", "--enclave-name", "hello"),
        ]
    ]
    listed = describe_enclaves(fake.env)
    assert [item["EnclaveID"] for item in listed] == [desc.enclave_id]
    assert desc == EnclaveDescription(
        enclave_id=listed[0]["EnclaveID"],
        enclave_cid=21,
        process_id=listed[0]["ProcessID"],
        state="RUNNING",
        name="hello",
        cpu_count=2,
        memory_mib=512,
        flags="NONE",
    )
    assert alive(desc.process_id)
    assert launcher.describe() == desc
    assert launcher.enclave_address(7073) == "vsock://21:7073"
    assert launcher.last_exit() is None
    with pytest.raises(LauncherError, match="already running"):
        launcher.start(fake.spec())
    launcher.stop()


def test_debug_mode_adds_the_flag_and_describe_reads_it(fake: Fake) -> None:
    launcher = fake.launcher()
    desc = launcher.start(fake.spec(debug_mode=True, cid=30, cpu_count=1, memory_mib=256))
    assert fake.calls("run-enclave")[0][-1] == "--debug-mode"
    assert desc.flags == "DEBUG_MODE"
    described = launcher.describe()
    assert described is not None
    assert (described.flags, described.enclave_cid, described.cpu_count) == ("DEBUG_MODE", 30, 1)
    launcher.stop()


def test_describe_picks_our_name_and_a_leftover_is_replaced(fake: Fake) -> None:
    # Another enclave on the host, and a leftover of ours from an earlier supervisor.
    for name, cid in (("other", "40"), ("hello", "41")):
        subprocess.run(
            [str(NITRO_CLI), "run-enclave", "--cpu-count", "1", "--memory", "128"]
            + ["--eif-path", str(fake.eif), "--enclave-cid", cid, "--enclave-name", name],
            check=True,
            capture_output=True,
        )
    before = {item["EnclaveName"]: item for item in describe_enclaves(fake.env)}
    launcher = fake.launcher()
    leftover = launcher.describe()
    assert leftover is not None and leftover.enclave_id == before["hello"]["EnclaveID"]
    desc = launcher.start(fake.spec(cpu_count=1))
    assert fake.calls("terminate-enclave") == [
        ["terminate-enclave", "--enclave-id", before["hello"]["EnclaveID"]]
    ]
    wait_for(lambda: not alive(before["hello"]["ProcessID"]))
    after = {item["EnclaveName"]: item["EnclaveID"] for item in describe_enclaves(fake.env)}
    assert after == {"other": before["other"]["EnclaveID"], "hello": desc.enclave_id}
    assert launcher.describe() == desc
    launcher.stop()


def test_json_parsing_skips_progress_lines() -> None:
    out = 'Start allocating memory...\nStarted enclave with cpu-ids: [1, 3]\n{\n  "A": 1\n}\n'
    assert parse_json("run-enclave", out) == {"A": 1}
    assert parse_json("describe-enclaves", "[]\n") == []
    with pytest.raises(LauncherError, match="did not print the expected JSON"):
        parse_json("describe-enclaves", "oops\n")
    item = {
        "EnclaveID": "i-1-enc2",
        "ProcessID": 7,
        "EnclaveCID": 16,
        "NumberOfCPUs": 2,
        "CPUIDs": [1, 3],
        "MemoryMiB": 512,
        "State": "TERMINATING",
        "Flags": "DEBUG_MODE",
    }
    desc = parse_description(item, name="hello")
    assert (desc.state, desc.flags, desc.name) == ("TERMINATING", "DEBUG_MODE", "hello")
    assert desc.as_nitro_json()["CPUIDs"] == [1, 2]
    with pytest.raises(LauncherError, match="MemoryMiB"):
        parse_description({k: v for k, v in item.items() if k != "MemoryMiB"})


@pytest.mark.parametrize(
    ("env", "spec", "expected"),
    [
        (
            {"FAKE_NITRO_CLI_MAX_MEMORY": "1024"},
            {"memory_mib": 2048},
            [
                "[ E27 ] Insufficient memory available",
                "increase memory_mib in /etc/nitro_enclaves/allocator.yaml "
                "or lower enclave.memory_mib",
            ],
        ),
        ({}, {"memory_mib": 32}, ["[ E26 ]", "raise enclave.memory_mib"]),
        (
            {"FAKE_NITRO_CLI_MAX_CPUS": "2"},
            {"cpu_count": 4},
            ["[ E22 ] Insufficient CPUs", "the CPU pool (allocator cpu_count) has too few CPUs"],
        ),
        (
            {},
            {"eif": Path("/nonexistent/image.eif")},
            [
                "[ E19 ] File operation failure",
                "no EIF at /nonexistent/image.eif: run `enclave build` or fix enclave.eif",
            ],
        ),
        (
            {"FAKE_NITRO_CLI_FAIL": "run-enclave=E39"},
            {},
            ["[ E39 ]", "the previous enclave is still being torn down; the watchdog will retry"],
        ),
        (
            {"FAKE_NITRO_CLI_FAIL": "describe-enclaves=E05"},
            {},
            ["nitro-cli describe-enclaves failed: [ E05 ] Process spawn failure."],
        ),
    ],
)
def test_nitro_cli_errors_name_the_code_the_cause_and_the_log(
    fake: Fake, env: dict[str, str], spec: dict[str, Any], expected: list[str]
) -> None:
    for key, value in env.items():
        fake.monkeypatch.setenv(key, value)
    launcher = fake.launcher()
    with pytest.raises(LauncherError) as caught:
        launcher.start(fake.spec(**spec))
    message = str(caught.value)
    for text in expected:
        assert text in message
    assert ("likely cause" in message) == ("E05" not in message)  # E05: no known cause
    log = message.split("nitro-cli error log: ", 1)[1].rstrip(")")
    assert Path(log).parent == fake.logs and Path(log).name.startswith("err")
    assert "Action:" in Path(log).read_text()
    assert fake_state(fake.folder)["enclaves"] == {}


def test_describe_retries_once_while_an_enclave_is_torn_down(fake: Fake) -> None:
    fake.monkeypatch.setenv("FAKE_NITRO_CLI_FAIL", "describe-enclaves=E39")
    launcher = fake.launcher()
    with pytest.raises(LauncherError, match=r"\[ E39 \].*the watchdog will retry"):
        launcher.describe()
    assert fake.calls("describe-enclaves") == [["describe-enclaves"], ["describe-enclaves"]]
    fake.monkeypatch.delenv("FAKE_NITRO_CLI_FAIL")
    assert launcher.describe() is None


def test_console_is_refused_outside_debug_mode(fake: Fake) -> None:
    launcher = fake.launcher()
    desc = launcher.start(fake.spec())
    done = subprocess.run(
        [str(NITRO_CLI), "console", "--enclave-id", desc.enclave_id],
        capture_output=True,
        text=True,
        timeout=30,
    )
    error = nitro_cli_error("console", done.stderr, done.returncode)
    assert done.returncode == 44 and error.code == "E44"
    assert "the console exists only in debug mode (enclave.debug_mode: true)" in str(error)
    launcher.stop()


def test_a_failure_without_a_code_quotes_stderr() -> None:
    error = nitro_cli_error("run-enclave", "\nerror: unexpected argument '--bogus'\n", 2)
    assert str(error) == (
        "nitro-cli run-enclave failed with exit status 2: error: unexpected argument '--bogus'"
    )
    assert error.code is None


def test_a_missing_binary_says_how_to_install_it(fake: Fake) -> None:
    fake.monkeypatch.setenv("PATH", str(fake.folder / "empty"))
    launcher = fake.launcher()
    for call in (lambda: launcher.start(fake.spec()), launcher.describe):
        with pytest.raises(LauncherError) as caught:
            call()
        assert str(caught.value) == NOT_FOUND
    assert NOT_FOUND == (
        "nitro-cli not found on PATH: install aws-nitro-enclaves-cli "
        "(and run the allocator service)"
    )
    launcher.stop()  # nothing started: nothing to do


def test_a_hanging_nitro_cli_times_out(fake: Fake) -> None:
    fake.monkeypatch.setenv("FAKE_NITRO_CLI_SLEEP", "30")
    launcher = fake.launcher(timeout_s=0.5)
    with pytest.raises(LauncherError, match=r"nitro-cli describe-enclaves timed out after 0\.5 s"):
        launcher.describe()
    with pytest.raises(LauncherError, match=r"nitro-cli describe-enclaves timed out after 0\.5 s"):
        launcher.start(fake.spec())
    assert fake.calls("run-enclave") == []


def test_stop_terminates_and_is_idempotent(fake: Fake) -> None:
    launcher = fake.launcher()
    desc = launcher.start(fake.spec())
    launcher.stop()
    assert not alive(desc.process_id)
    assert describe_enclaves(fake.env) == []
    assert launcher.describe() is None
    info = launcher.last_exit()
    assert info is not None and info.exit_code is None and info.signal is None
    assert info.reason == f"stopped by the supervisor: enclave {desc.enclave_id} terminated"
    launcher.stop()  # a no-op: no second terminate-enclave
    assert len(fake.calls("terminate-enclave")) == 1
    assert launcher.last_exit() == info


def test_stopping_an_enclave_that_vanished_is_fine(fake: Fake) -> None:
    launcher = fake.launcher()
    desc = launcher.start(fake.spec())
    os.killpg(desc.process_id, signal.SIGKILL)
    wait_for(lambda: not alive(desc.process_id))
    launcher.stop()  # terminate-enclave answers E11 for it: already gone
    assert fake.calls("terminate-enclave") == [
        ["terminate-enclave", "--enclave-id", desc.enclave_id]
    ]
    assert launcher.describe() is None


def test_a_gone_enclave_reports_the_new_nitro_cli_error_log(fake: Fake) -> None:
    fake.logs.mkdir(parents=True, exist_ok=True)
    stale = fake.logs / "err2020-01-01T00:00:00+00:00.log"
    stale.write_text("old failure\n")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    launcher = fake.launcher()
    desc = launcher.start(fake.spec())
    fresh = fake.logs / "err2030-01-01T00:00:00+00:00.log"
    fresh.write_text("".join(f"  backtrace line {i}\n" for i in range(30)))
    os.killpg(desc.process_id, signal.SIGKILL)
    wait_for(lambda: launcher.describe() is None)
    info = launcher.last_exit()
    assert info is not None and (info.exit_code, info.signal) == (None, None)
    assert info.reason == (
        f"enclave {desc.enclave_id} is gone (no longer listed by nitro-cli describe-enclaves); "
        f"nitro-cli error log: {fresh}"
    )
    assert info.log_tail == [f"  backtrace line {i}" for i in range(10, 30)]
    assert info.timestamp.endswith("Z")


def test_a_gone_enclave_without_a_new_error_log(fake: Fake) -> None:
    fake.logs.mkdir(parents=True, exist_ok=True)
    stale = fake.logs / "err2020-01-01T00:00:00+00:00.log"
    stale.write_text("old failure\n")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    launcher = fake.launcher()
    desc = launcher.start(fake.spec())
    os.killpg(desc.process_id, signal.SIGKILL)
    info = wait_for(launcher.last_exit)
    assert info.reason == (
        f"enclave {desc.enclave_id} is gone (no longer listed by nitro-cli describe-enclaves)"
    )
    assert info.log_tail == []


def test_debug_mode_keeps_the_console_tail_after_the_enclave_dies(fake: Fake) -> None:
    launcher = fake.launcher(console_lines=10)
    desc = launcher.start(fake.spec(debug_mode=True))
    wait_for(lambda: launcher.log_lines()[-1:] == ["ready"])
    assert launcher.log_lines() == [f"line {i}" for i in range(21, 30)] + ["ready"]
    assert fake.calls("console") == [["console", "--enclave-id", desc.enclave_id]]
    os.killpg(desc.process_id, signal.SIGKILL)
    wait_for(lambda: launcher.describe() is None)
    info = launcher.last_exit()
    assert info is not None
    assert info.reason.startswith(f"enclave {desc.enclave_id} is gone")
    assert info.log_tail == [f"line {i}" for i in range(21, 30)] + ["ready"]
    # The console reader ended with the enclave.
    wait_for(lambda: processes_mentioning(desc.enclave_id) == [])
