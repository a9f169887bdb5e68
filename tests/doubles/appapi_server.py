"""The runtime's real app API on loopback, for the tests of its client and of the example apps.

create_app_api runs in the runtime's own HTTP server (AsgiListener) on an event loop in a thread,
over in-memory backends (tests/doubles/memory_backends.py): clients talk to it over real
sockets and get its real answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from enclave_core.appclient import EnclaveClient
from enclave_core.config import Config, LimitsSettings
from enclave_core.crypto.envelope import EncryptedStorage
from enclave_core.http.listener import AsgiListener
from enclave_core.runtime.appapi import create_app_api
from enclave_core.runtime.dynsecrets import DynamicSecrets
from enclave_core.runtime.instrumented import CountingStorage
from enclave_core.runtime.state import RuntimeState
from tests.doubles.memory_backends import DOUBLES_CONFIG, MemoryNsm, MemoryStorage
from tests.helpers import LoopThread

TOKEN = "c0ffee" * 10 + "beef"


@dataclass
class AppApi:
    """A running app API: its state, its storage backend, its URL and the token it wants."""

    state: RuntimeState
    backend: MemoryStorage
    url: str
    token: str = TOKEN

    def client(self, token: str = TOKEN, **kwargs: float) -> EnclaveClient:
        """A client of this app API (with another ``token`` to be refused)."""
        return EnclaveClient(self.url, token, **kwargs)

    def env(self) -> dict[str, str]:
        """The variables the runtime gives the app for it."""
        return {"ENCLAVE_API_URL": self.url, "ENCLAVE_MGMT_TOKEN": self.token}


@contextlib.contextmanager
def app_api_servers(make_config: Callable[..., Config]) -> Iterator[Callable[..., AppApi]]:
    """Yield ``start(**limits)``, which starts an app API; all of them are closed on exit.

    A test module makes it a fixture::

        @pytest.fixture
        def serve_app_api(make_config):
            with app_api_servers(make_config) as start:
                yield start
    """
    loop = LoopThread("uvloop")
    servers: list[AsgiListener] = []

    def start(**limits: Any) -> AppApi:
        state = RuntimeState(make_config(**DOUBLES_CONFIG))
        backend = MemoryStorage()
        storage = CountingStorage(EncryptedStorage(backend, bytes(32)), state.metrics)
        state.attestation = MemoryNsm()
        state.storage = storage
        state.dynamic = DynamicSecrets(storage, state.metrics, frozenset({"APP_SIGNING_KEY"}))
        state.dynamic_secrets = 0
        state.mgmt_token = TOKEN
        state.stage = "app"
        app = create_app_api(state)
        server = AsgiListener(app, name="app API", limits=LimitsSettings(**limits))
        loop.run(server.start("tcp://127.0.0.1:0"))
        servers.append(server)
        return AppApi(state, backend, f"http://127.0.0.1:{server.port}")

    try:
        yield start
    finally:
        for server in servers:
            loop.run(server.close(0.1))
        loop.close()
