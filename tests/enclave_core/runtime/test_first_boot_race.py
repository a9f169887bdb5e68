"""Several enclaves of one app booting for the first time at once keep exactly one secret.

With ``instances: N`` every host boots against the same parameter store. Each first boot finds
no ciphertext and generates a data key; only one may be kept, and every enclave must end up
using that one, or two enclaves would hand the app different static secrets.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from enclave_plugins.local_secrets import LocalSecrets

from enclave_core import hookimpl
from enclave_core.config import Config
from enclave_core.metrics import Metrics
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.plugin.parameters import create_parameter
from enclave_core.plugin.registry import BackendRegistry
from enclave_core.runtime.boot import run_boot
from enclave_core.runtime.instrumented import CountingSecrets
from enclave_core.runtime.state import RuntimeState

STATIC = {"static": [{"name": "signing_key", "env_var": "APP_SIGNING_KEY"}]}
SECRET_PARAM = "signing_key/Ciphertext"


class LateSecrets(LocalSecrets):
    """Local secrets that miss the first read of each ciphertext, as a boot racing another
    enclave does: it looked before the other enclave stored its value."""

    name: ClassVar[str] = "late"
    missed: ClassVar[set[str]] = set()

    def get(self, name: str) -> str | None:
        if name.endswith("Ciphertext") and (str(self.path), name) not in self.missed:
            self.missed.add((str(self.path), name))  # type: ignore[arg-type]
            return None
        return super().get(name)


class LatePlugin:
    @hookimpl
    def enclave_register_secrets(self, registry: BackendRegistry[Any]) -> None:
        registry.add(LateSecrets)


def _boot(config: Config, plugins: Any) -> RuntimeState:
    state = RuntimeState(config)
    assert asyncio.run(run_boot(state, plugins, None)) is True, state.boot_error
    return state


def test_a_boot_that_loses_the_race_uses_the_stored_secret(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(secrets={**STATIC, "backend": "late"})
    plugins = get_plugin_manager(extra_plugins=[("test-late", LatePlugin())])
    params = LocalSecrets(
        config.state_dir / "secrets.json", prefix=config.prefix, app_name=config.name
    )
    winner = _boot(config, plugins)
    stored = params.get(SECRET_PARAM)
    assert stored is not None

    # The same app booted by a second enclave that looked before the winner stored its keys:
    # it generates its own, cannot store them, and must use the winner's.
    LateSecrets.missed.clear()
    loser = _boot(config, plugins)

    assert loser.static_env == winner.static_env  # the app sees one secret everywhere
    assert loser.storage_dek == winner.storage_dek  # and one storage key
    assert params.get(SECRET_PARAM) == stored  # the winner's ciphertext was not overwritten


def test_create_stores_only_when_absent(tmp_path: Path) -> None:
    store = LocalSecrets(tmp_path / "secrets.json", prefix="dev", app_name="hello")
    assert store.create("a/Ciphertext", "one") is True
    assert store.create("a/Ciphertext", "two") is False
    assert store.get("a/Ciphertext") == "one"


def test_counting_wrapper_creates_through_the_backend(tmp_path: Path) -> None:
    metrics = Metrics()
    store = CountingSecrets(LocalSecrets(tmp_path / "s.json", prefix="dev", app_name="a"), metrics)
    assert create_parameter(store, "k", "v1") is True
    assert create_parameter(store, "k", "v2") is False
    assert store.get("k") == "v1"
    assert metrics.snapshot()["secret_writes"] == 2


class PutOnly:
    """A third-party backend without ``create``: the core falls back to get-then-put."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def put(self, name: str, value: str) -> None:
        self.values[name] = value


def test_backends_without_create_fall_back_to_get_then_put() -> None:
    store = PutOnly()
    assert create_parameter(store, "k", "v1") is True  # type: ignore[arg-type]
    assert create_parameter(store, "k", "v2") is False  # type: ignore[arg-type]
    assert store.values == {"k": "v1"}


CHILD = """
import sys, time
from pathlib import Path
from enclave_plugins.local_secrets import LocalSecrets
path, go, who = sys.argv[1:4]
store = LocalSecrets(Path(path), prefix="dev", app_name="hello")
while not Path(go).exists():
    time.sleep(0.005)
print(store.create("signing_key/Ciphertext", who))
"""


def test_concurrent_processes_create_exactly_once(tmp_path: Path) -> None:
    path, go = tmp_path / "secrets.json", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(go), f"enclave-{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    time.sleep(0.5)  # the interpreters start, then all create at once
    go.touch()
    results = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append((out.strip(), f"enclave-{i}"))
    winners = [who for out, who in results if out == "True"]
    assert len(winners) == 1
    store = LocalSecrets(path, prefix="dev", app_name="hello")
    assert store.get("signing_key/Ciphertext") == winners[0]
