"""One `enclave dev` stack for the fuzzer: its listeners, their tokens, snapshots and restarts.

The stack is the example app (``examples/hello``) copied into a temporary folder with an
enclave.yaml on free loopback ports and TLS on the public listener
(:func:`tests.e2e.stack.make_stack`).
Tokens are read the way an operator or a test on the same machine can: the supervisor's from its
file in the state folder (mode 0600), the app API's from the app's environment, where the runtime
put it (``/proc/<app pid>/environ``). The app API token is new on every boot, so it is read again
after each restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from enclave_core.supervisor.token import read_token
from fuzz.state import digest, file_items, parameter_items, storage_items
from tests.e2e.stack import DevStack, http, make_stack, read_environ

#: The example app's static secret (examples/hello/enclave.yaml).
STATIC_SECRET_ENV = "APP_SIGNING_KEY"  # noqa: S105 - a variable name
REQUEST_TIMEOUT_S = 10.0
BOOT_TIMEOUT_S = 60.0


class StackExited(Exception):
    """`enclave dev` ended while the fuzzer waited for it."""


class UnexpectedRestart(AssertionError):
    """The runtime or the app restarted while no request of the fuzzer asked for it."""


@dataclass
class FuzzStack:
    """A running `enclave dev` and what the fuzzer needs to reach and watch it."""

    dev: DevStack
    app_token: str = ""
    app_pid: int = 0
    restarts: int = 0
    restart_seconds: float = 0.0
    session: requests.Session = field(default_factory=requests.Session)

    @classmethod
    def create(cls, folder: Path) -> FuzzStack:
        """Write the stack's folder (app and enclave.yaml) without starting it."""
        return cls(dev=make_stack(folder, runtime={"tls": True}))

    # ------------------------------------------------------------------ addresses and tokens

    @property
    def runtime(self) -> dict[str, Any]:
        """The ``runtime:`` section of the stack's enclave.yaml."""
        section: dict[str, Any] = self.dev.document["runtime"]
        return section

    @property
    def public_url(self) -> str:
        """The runtime's public listener (TLS; its certificate is checked by `enclave verify`)."""
        return f"https://127.0.0.1:{self.runtime['port']}"

    @property
    def app_api_url(self) -> str:
        """The runtime's app API (loopback, Bearer $ENCLAVE_MGMT_TOKEN)."""
        return f"http://127.0.0.1:{self.runtime['app_api_port']}"

    @property
    def control_url(self) -> str:
        """The runtime's control listener (the supervisor's own channel)."""
        return f"http://127.0.0.1:{self.runtime['control_port']}"

    @property
    def supervisor_url(self) -> str:
        """The supervisor's management API."""
        return self.dev.supervisor_url

    @property
    def state_dir(self) -> Path:
        """``.enclave/`` beside the stack's enclave.yaml."""
        return self.dev.folder / ".enclave"

    @property
    def supervisor_token(self) -> str:
        """The management token from the supervisor's token file."""
        token = read_token(self.state_dir)
        if token is None:
            raise AssertionError(f"no supervisor token in {self.state_dir / 'supervisor'}")
        return token

    def headers_for(self, listener: str) -> dict[str, str]:
        """The Authorization header for a listener: the app API's token or the supervisor's.

        The public and control listeners take no token (their documents declare none), so none is
        sent there: the public listener would pass an unknown path, and its headers, to the app.
        """
        if listener == "app-api":
            return {"Authorization": f"Bearer {self.app_token}"}
        if listener == "supervisor":
            return {"Authorization": f"Bearer {self.supervisor_token}"}
        return {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start `enclave dev` in its own process group and wait until everything is ready."""
        dev = self.dev
        dev.launch()
        self.wait_ready()
        # One visit, so storage holds the example app's counter as in normal use.
        status, _, _ = http("GET", dev.ingress_url + "/", timeout=REQUEST_TIMEOUT_S)
        if status != 200:
            raise AssertionError(f"the example app answered GET / with {status}")

    def wait_ready(self) -> None:
        """Wait for the supervisor to report running and the app API to answer its (new) token."""

        def running() -> bool:
            response = requests.get(self.supervisor_url + "/health", timeout=5)
            return response.status_code == 200 and response.json().get("status") == "running"

        def app_api_ready() -> bool:
            self.app_pid = self.dev.app_pid()
            self.app_token = read_environ(self.app_pid)["ENCLAVE_MGMT_TOKEN"]
            response = self.get(self.app_api_url + "/v1/storage", "app-api")
            return response.status_code == 200

        self._wait(running)
        self._wait(app_api_ready)

    def _wait(self, check: Callable[[], bool]) -> None:
        """Poll ``check`` until true; stop at once if `enclave dev` exited, else after a while."""
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        last: object = None
        while time.monotonic() < deadline:
            process = self.dev.process
            if process is not None and process.poll() is not None:
                tail = self.dev.stderr_path.read_text(errors="replace")[-2000:]
                raise StackExited(f"enclave dev exited with {process.returncode}:\n{tail}")
            try:
                if check():
                    return
            except (requests.RequestException, OSError, ValueError, KeyError, AssertionError) as e:
                last = e  # not up yet (AssertionError: DevStack finds no app process yet)
            time.sleep(0.1)
        raise AssertionError(
            f"{check.__name__}: not within {BOOT_TIMEOUT_S:.0f}s (last: {last!r}); "
            f"see {self.dev.stderr_path}"
        )

    def restart(self) -> None:
        """Start the enclave again after a stop the fuzzer made (POST /v1/start), wait for it."""
        started = time.monotonic()
        response = self.session.post(
            self.supervisor_url + "/v1/start",
            headers=self.headers_for("supervisor"),
            timeout=BOOT_TIMEOUT_S,
        )
        if response.status_code not in (200, 409):
            raise AssertionError(
                f"POST /v1/start after a stop answered {response.status_code}: {response.text}"
            )
        self.wait_ready()
        self.restarts += 1
        self.restart_seconds += time.monotonic() - started

    def check_same_app(self) -> None:
        """Raise UnexpectedRestart if the app the fuzzer knows is gone (crash, watchdog restart)."""
        if not Path(f"/proc/{self.app_pid}").exists():
            raise UnexpectedRestart(
                f"the app (pid {self.app_pid}) is gone without a stop from the fuzzer; "
                f"see {self.dev.stderr_path}"
            )

    def stop(self) -> None:
        """Stop `enclave dev` by its pid, then whatever is left in its process group."""
        process = self.dev.process
        self.session.close()
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # `enclave dev` was started with start_new_session=True: its pid is its group's id.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
            self.dev.kill_leftovers()

    # ------------------------------------------------------------------ requests and snapshots

    def get(self, url: str, listener: str) -> requests.Response:
        """One GET of the harness itself (not a fuzzed case), with the listener's token."""
        return self.session.get(
            url, headers=self.headers_for(listener), timeout=REQUEST_TIMEOUT_S, verify=False
        )

    def snapshot(self) -> dict[str, str]:
        """Everything stored or secret, as comparable digests (see :mod:`fuzz.state`)."""
        items: dict[str, str] = {}
        items.update(storage_items(self.state_dir / "storage"))
        items.update(parameter_items(self.state_dir / "secrets.json"))
        items.update(file_items(self.state_dir / "kms", "kms"))

        listed = self.get(self.app_api_url + "/v1/storage", "app-api")
        if listed.status_code != 200:
            raise AssertionError(f"snapshot: GET /v1/storage answered {listed.status_code}")
        for key in listed.json()["keys"]:
            items[f"listed:{key}"] = "listed"
        described = self.get(self.app_api_url + "/v1/secrets", "app-api")
        if described.status_code != 200:
            raise AssertionError(f"snapshot: GET /v1/secrets answered {described.status_code}")
        for secret in described.json()["secrets"]:
            items[f"secret-meta:{secret['name']}"] = json.dumps(secret, sort_keys=True)

        info = self.get(self.public_url + "/v1/enclave-info", "public")
        if info.status_code != 200:
            raise AssertionError(f"snapshot: GET /v1/enclave-info answered {info.status_code}")
        for name in ("kms_key_id", "pcr0"):
            items[f"info:{name}"] = str(info.json().get(name))
        value = read_environ(self.app_pid).get(STATIC_SECRET_ENV, "")
        items[f"static:{STATIC_SECRET_ENV}"] = digest(value.encode()) if value else "absent"
        return items


def elapsed(since: float) -> float:
    """Seconds since ``since`` (time.monotonic), for the run's summary."""
    return time.monotonic() - since
