"""`enclave dev`: the announcement, config errors before anything starts, a real run and stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from enclave_core.cli.dev import READY_LINE, announcer
from enclave_core.cli.main import main
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.testing import dev_config_document

EXAMPLE_APP = Path(__file__).resolve().parents[3] / "examples" / "hello" / "app.py"

LAUNCHERS = ", ".join(get_plugin_manager().launcher.names())


def test_announcer_prints_each_address_then_ready() -> None:
    printed: list[str] = []
    announcer(printed.append)(
        {
            "supervisor": "http://127.0.0.1:8443",
            "ingress": "http://127.0.0.1:8080 -> runtime 7073",
            "app_api": "http://127.0.0.1:7075",
        }
    )
    assert printed == [
        "supervisor  http://127.0.0.1:8443",
        "ingress     http://127.0.0.1:8080 -> runtime 7073",
        "app api     http://127.0.0.1:7075",
        READY_LINE,
    ]


def test_backend_errors_stop_dev_before_anything_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "enclave.yaml"
    path.write_text(yaml.safe_dump(dev_config_document(launcher={"backend": "firecracker"})))
    code = main(["dev", "-c", str(path)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"ERROR: {path} is invalid: launcher.backend: launcher backend 'firecracker' is not "
        f"available; installed: {LAUNCHERS} (is the plugin installed?)"
    ]
    assert not (tmp_path / ".enclave").exists()


def read_until(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    """Poll a file until it contains ``text``; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        assert process.poll() is None, f"enclave dev exited early:\n{content}"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not printed within {timeout}s")


def processes_in(folder: Path) -> list[str]:
    """Command lines of processes running in ``folder`` or naming it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.startswith(str(folder)) or str(folder) in cmdline:
            found.append(cmdline)
    return found


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        body: bytes = response.read()
        return body.decode()


@pytest.mark.e2e
def test_dev_announces_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE_APP, tmp_path / "app.py")
    document = dev_config_document(app={"command": [sys.executable, "app.py"]})
    (tmp_path / "enclave.yaml").write_text(yaml.safe_dump(document))
    ingress = "http://" + document["supervisor"]["ingress"][0]["listen"]
    stdout, stderr = tmp_path / "dev.out", tmp_path / "dev.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "enclave_core.cli.main", "dev"],
            cwd=tmp_path,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        printed = read_until(stdout, READY_LINE, process, timeout=60)
        assert f"supervisor  http://{document['supervisor']['listen']}" in printed
        assert ingress in printed
        deadline = time.monotonic() + 60
        while True:
            try:
                greeting = get(ingress + "/")
                break
            except OSError:
                assert time.monotonic() < deadline, stderr.read_text()[-3000:]
                time.sleep(0.2)
        assert greeting.startswith("Hello from Simple Enclave!")
        assert "secret present: no" in greeting  # this config declares no static secret
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=15)  # README: Ctrl-C stops everything within 10 s
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert code == 0, stderr.read_text()[-3000:]
    assert processes_in(tmp_path) == []  # no supervisor, runtime or app left behind
