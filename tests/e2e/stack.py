"""A real development stack for end-to-end tests: `enclave dev` with the example app."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from enclave_core.testing import dev_config_document
from tests.helpers import REPO_ROOT, wait_for

EXAMPLE = REPO_ROOT / "examples" / "hello"


_UNVERIFIED_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_UNVERIFIED_TLS.check_hostname = False
_UNVERIFIED_TLS.verify_mode = ssl.CERT_NONE


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """Make one HTTP request; return status, headers and body (errors included)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    # The runtime's TLS certificate is self-signed and attested, not CA-issued: tests that
    # check it do so with `enclave verify`; here it is only transport.
    context = _UNVERIFIED_TLS if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def proc_children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents[int(entry.name)] = ppid
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current:
                found.append(child)
                frontier.append(child)
    return found


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line or environment mentions ``text`` (to find leftovers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if text in cmdline or cwd.startswith(text):
            pids.append(int(entry.name))
    return pids


def read_environ(pid: int) -> dict[str, str]:
    """The environment of a process (same user)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = [item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item]
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


@dataclass
class DevStack:
    """One `enclave dev` process and the addresses of its parts."""

    folder: Path
    document: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    stderr_path: Path = field(default_factory=Path)

    @property
    def config_path(self) -> Path:
        return self.folder / "enclave.yaml"

    @property
    def ingress_url(self) -> str:
        scheme = "https" if self.document["runtime"].get("tls") else "http"
        return f"{scheme}://" + self.document["supervisor"]["ingress"][0]["listen"]

    @property
    def supervisor_url(self) -> str:
        return "http://" + self.document["supervisor"]["listen"]

    @property
    def app_api_url(self) -> str:
        return f"http://127.0.0.1:{self.document['runtime']['app_api_port']}"

    @property
    def token(self) -> str:
        return (self.folder / ".enclave" / "supervisor" / "token").read_text().strip()

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "enclave_core.cli.main", *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
        )

    def launch(self, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        """Start `enclave dev` (with ``args``) in its own process group (extra ``env`` on top);
        do not wait."""
        # Beside the app folder: a log there would not change the image, but keep it apart.
        self.stderr_path = self.folder.parent / f"{self.folder.name}-dev-stderr.log"
        argv = [sys.executable, "-m", "enclave_core.cli.main", "dev", "-c", str(self.config_path)]
        with self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [*argv, *args],
                cwd=self.folder,
                stdout=err,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )

    def start(self, args: tuple[str, ...] = ()) -> None:
        """Start `enclave dev` and wait until the app answers through the ingress."""
        self.launch(args=args)
        wait_for(self.greeting, timeout=60)

    def output(self) -> str:
        """Everything `enclave dev` printed so far (stdout and stderr)."""
        return self.stderr_path.read_text(errors="replace")

    def greeting(self) -> str:
        status, _, body = http("GET", self.ingress_url + "/", timeout=5)
        return body.decode() if status == 200 else ""

    def app_json(self) -> dict[str, Any]:
        status, _, body = http("GET", self.ingress_url + "/json", timeout=5)
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def health(self) -> dict[str, Any]:
        _, _, body = http("GET", self.supervisor_url + "/health", timeout=5)
        result: dict[str, Any] = json.loads(body)
        return result

    def supervisor_post(self, path: str) -> tuple[int, dict[str, Any]]:
        status, _, body = http(
            "POST", self.supervisor_url + path, b"", {"Authorization": f"Bearer {self.token}"}
        )
        return status, json.loads(body or b"{}")

    def runtime_pid(self) -> int:
        assert self.process is not None
        for pid in proc_children(self.process.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"runtime" in cmd and b"enclave_core.cli.main" in cmd:
                return pid
        raise AssertionError("runtime process not found")

    def app_pid(self) -> int:
        runtime = self.runtime_pid()
        for pid in proc_children(runtime):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"app.py" in cmd:
                return pid
        raise AssertionError("app process not found")

    def app_env(self) -> dict[str, str]:
        return read_environ(self.app_pid())

    def stop(self, timeout: float = 10.0) -> float:
        """SIGTERM `enclave dev`; return how long it took to exit."""
        assert self.process is not None
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout + 5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return time.monotonic() - started

    def running(self) -> Iterator[DevStack]:
        """Start the stack, yield it, then stop it and kill whatever it left (for fixtures:
        ``yield from stack.running()``)."""
        try:
            self.start()
            yield self
        finally:
            self.stop()
            self.kill_leftovers()

    def kill_leftovers(self) -> list[int]:
        left = processes_mentioning(str(self.folder))
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return left


def make_stack(folder: Path, **overrides: Any) -> DevStack:
    """Copy the example app into ``folder`` and write an enclave.yaml on free ports."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "app.py", folder / "app.py")
    base = {
        "app": {"command": [sys.executable, "app.py"], "health_path": "/health"},
        "secrets": {"static": [{"name": "signing_key", "env_var": "APP_SIGNING_KEY"}]},
    }
    from enclave_core.testing import deep_merge

    document = dev_config_document(**deep_merge(base, overrides))
    (folder / "enclave.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return DevStack(folder=folder, document=document)
