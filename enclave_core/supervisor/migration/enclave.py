"""What the migration steps drive in the real supervisor: the old enclave and the watchdog.

:class:`SupervisorEnclave` implements :class:`~.steps.EnclaveControl`: step 5 posts
``/v1/export-key`` to the old enclave's control listener once it is ready; step 8 stops the old
enclave and starts the new one through the watchdog, then waits until it is ready. Both waits are
bounded and end early when the supervisor stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from enclave_core.config import Config
from enclave_core.errors import EnclaveError, StateConflict
from enclave_core.plugin.interfaces import Launcher
from enclave_core.streams.transport import connect_sync
from enclave_core.supervisor.runtime_client import MAX_BODY, Probe
from enclave_core.supervisor.watchdog import Watchdog

#: How often a waiting step asks the runtime's control /health: a loopback or vsock request,
#: cheap; a new image serves as soon as it is ready.
READY_POLL_S = 0.05


class SupervisorEnclave:
    """The steps' view of the real enclave: export-key, and a restart through the watchdog.

    Its methods block; they run in the migration's worker thread and reach the watchdog on the
    supervisor's event loop.
    """

    def __init__(
        self,
        config: Config,
        launcher: Launcher,
        watchdog: Watchdog,
        health: Callable[[], Probe],
        loop: asyncio.AbstractEventLoop,
        *,
        ready_timeout_s: float = 120.0,
        export_timeout_s: float = 60.0,
        stopping: threading.Event | None = None,
    ) -> None:
        self._config = config
        self._stopping = stopping or threading.Event()
        self._launcher = launcher
        self._watchdog = watchdog
        self._health = health
        self._loop = loop
        self._ready_timeout_s = ready_timeout_s
        self._export_timeout_s = export_timeout_s
        #: The watchdog's ``last_exit`` once the new enclave was started (see :meth:`_gave_up`).
        self._exit_before: object = None

    def create_migration_key(
        self, target_pcr0: str, migration_id: str, target_pcr8: str | None = None
    ) -> dict[str, Any]:
        """Wait until the old enclave is ready, then ask it to create the migration key."""
        request = {"target_pcr0": target_pcr0, "migration_id": migration_id}
        if target_pcr8 is not None:
            request["target_pcr8"] = target_pcr8
        return self._control_post("/v1/migration-key", request, "migration-key")

    def export_key(self) -> dict[str, Any]:
        """Wait until the old enclave is ready, then POST ``/v1/export-key`` on its control port."""
        return self._control_post("/v1/export-key", {}, "export-key")

    def _control_post(self, path: str, request: dict[str, Any], what: str) -> dict[str, Any]:
        self.wait_ready("the old enclave")
        address = self._launcher.enclave_address(self._config.runtime.control_port)
        body = json.dumps(request).encode()
        try:
            status, answer = http_post(address, path, body, self._export_timeout_s)
        except (OSError, http.client.HTTPException) as exc:
            raise EnclaveError(f"{what} on the old enclave at {address} failed: {exc}") from None
        try:
            doc = json.loads(answer)
        except ValueError:
            doc = None
        if status == 200 and isinstance(doc, dict):
            return doc
        detail = doc.get("description") if isinstance(doc, dict) else None
        raise EnclaveError(
            f"the old enclave refused {what} ({status}): {detail or 'no reason given'}"
        )

    def restart(self) -> None:
        """Stop the old enclave and start the new one through the watchdog; wait until ready."""
        future = asyncio.run_coroutine_threadsafe(self._restart(), self._loop)
        deadline = time.monotonic() + self._ready_timeout_s
        while True:
            try:
                future.result(timeout=0.5)
                break
            except TimeoutError:
                self._check_deadline(deadline, "restarting the enclave")
        self._exit_before = self._watchdog.last_exit
        self.wait_ready("the new enclave", give_up_on_failure=True)

    def _check_deadline(self, deadline: float, what: str) -> None:
        if self._stopping.is_set():
            raise EnclaveError(f"the supervisor is stopping while {what}; run `enclave migrate`")
        if time.monotonic() >= deadline:
            raise EnclaveError(f"{what} took more than {self._ready_timeout_s:g} s")

    async def _restart(self) -> None:
        with contextlib.suppress(StateConflict):  # already stopped
            await self._watchdog.stop_enclave()
        await self._watchdog.start_enclave()

    def wait_ready(self, what: str, *, give_up_on_failure: bool = False) -> None:
        """Poll the runtime's control ``/health`` until ready (bounded).

        :param give_up_on_failure: stop waiting at the first sign that cannot mend: a failed boot
            stage, or an app that failed until the runtime gave up (a new image that is broken).
        """
        deadline = time.monotonic() + self._ready_timeout_s
        probe = self._health()
        while not probe.ok:
            if give_up_on_failure and _hopeless(probe):
                raise EnclaveError(f"{what} failed: {probe.detail}")
            if give_up_on_failure and (gone := self._gave_up()) is not None:
                raise EnclaveError(f"{what} failed: {gone}")
            if time.monotonic() >= deadline:
                raise EnclaveError(
                    f"{what} did not become ready within {self._ready_timeout_s:g} s "
                    f"(last health: {probe.describe()})"
                )
            self._check_deadline(deadline + 1, f"waiting for {what}")
            time.sleep(READY_POLL_S)
            probe = self._health()

    def _gave_up(self) -> str | None:
        """Why the enclave started by :meth:`restart` ended, if it did (the watchdog saw it go)."""
        last = self._watchdog.last_exit
        if last is None or last is self._exit_before:
            return None
        return last.reason or "the new enclave exited"


def _hopeless(probe: Probe) -> bool:
    """Whether the runtime says it will not become ready by itself."""
    if probe.status != "degraded":
        return False
    return probe.detail.startswith("boot stage") or "the runtime exits" in probe.detail


def http_post(address: str, path: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
    """POST ``body`` (JSON) to a transport address; return the status and (bounded) body."""
    sock = connect_sync(address, timeout=timeout_s)
    try:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: enclave\r\nAccept: application/json\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
            + body
        )
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            data = response.read(MAX_BODY)
        finally:
            response.close()
        return response.status, data
    finally:
        sock.close()
