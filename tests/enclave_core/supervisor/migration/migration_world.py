"""The migration tests' world: a booted old enclave in process, and its stand-in control listener.

The "old enclave" is a real in-process boot (local KMS, secrets, storage, simulated NSM) of the
app folder; the stand-in answers steps 2 and 5 with the runtime's own code
(:func:`~enclave_core.runtime.migration_key.create_migration_key`,
:func:`~enclave_core.runtime.export.export_keys`), as its control listener would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave_plugins.local_kms import LocalKms

from enclave_core.config import Config
from enclave_core.errors import EnclaveError
from enclave_core.image.current import measure_new_image
from enclave_core.kmspolicy.canonical import match_policy
from enclave_core.plugin.backends import build_backend
from enclave_core.plugin.interfaces import Kms, Secrets
from enclave_core.plugin.manager import PluginManager, get_plugin_manager
from enclave_core.runtime.boot import run_boot
from enclave_core.runtime.export import export_keys
from enclave_core.runtime.migration_key import create_migration_key
from enclave_core.runtime.state import RuntimeState
from enclave_core.supervisor.migration.service import MigrationService

STATIC = {"static": [{"name": "signing_key", "env_var": "APP_SIGNING_KEY"}]}
TOKEN = "ab" * 32


class Crash(Exception):
    """Stands in for the supervisor dying right after a step's checkpoint."""


def boot(config: Config, plugins: PluginManager) -> RuntimeState:
    state = RuntimeState(config)
    assert asyncio.run(run_boot(state, plugins, None)) is True, state.boot_error
    return state


@dataclass
class OldEnclave:
    """The old enclave's control listener (steps 2 and 5) and the launcher (step 8), in process.

    :ivar write: False stands for an export whose parameters never arrive.
    """

    state: RuntimeState
    secrets: Secrets
    exports: int = 0
    keys_made: int = 0
    restarts: int = 0
    write: bool = True
    gate: threading.Event | None = None
    refuse: str | None = None
    names: list[str] = field(default_factory=list)

    def create_migration_key(
        self, target_pcr0: str, migration_id: str, target_pcr8: str | None = None
    ) -> dict[str, Any]:
        key = create_migration_key(
            self.state, target_pcr0=target_pcr0, migration_id=migration_id, target_pcr8=target_pcr8
        )
        self.keys_made += 1
        return key.as_json()

    def export_key(self) -> dict[str, Any]:
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.refuse is not None:
            raise EnclaveError(f"the old enclave refused export-key (403): {self.refuse}")
        self.exports += 1
        if not self.write:
            return {"exported": ["signing_key", "StorageDEK"], "pcr0": self.state.pcr0}
        answer = export_keys(self.state).as_json()
        self.names = list(answer["exported"])
        return answer

    def restart(self) -> None:
        self.restarts += 1


@dataclass
class World:
    config: Config
    plugins: PluginManager
    new_dir: Path
    old: RuntimeState
    old_key: str

    def backends(self) -> tuple[Kms, Secrets]:
        """Fresh backend objects, as a restarted supervisor would build."""
        return (
            build_backend(self.config, self.plugins, "kms"),
            build_backend(self.config, self.plugins, "secrets"),
        )

    def local_kms(self, cls: type[LocalKms]) -> LocalKms:
        """A ``cls`` on the same key directory, principal and root as the configured backend."""
        kms = self.backends()[0]
        assert isinstance(kms, LocalKms)
        return cls(kms.directory, region=kms.region, principal=kms.principal, root_pem=kms.root_pem)

    def new_keys(self) -> list[str]:
        return sorted(set(self.key_ids()) - {self.old_key})

    def locked_to(self, key: str, pcr0: str) -> bool:
        params = match_policy(self.backends()[0].get_key_policy(key))
        return params.pcr0 == pcr0 and params.migration

    @property
    def secrets(self) -> Secrets:
        return self.backends()[1]

    def key_ids(self) -> list[str]:
        kms = self.backends()[0]
        assert isinstance(kms, LocalKms)
        return kms.key_ids()

    def service(
        self, enclave: OldEnclave, kms: Kms | None = None, **kwargs: Any
    ) -> MigrationService:
        return MigrationService(
            self.config,
            backends=self.backends if kms is None else (lambda: (kms, self.backends()[1])),
            enclave_factory=lambda: enclave,
            measure=lambda config, **kw: measure_new_image(config, plugins=self.plugins, **kw),
            **kwargs,
        )

    def enclave(self, **kwargs: Any) -> OldEnclave:
        return OldEnclave(self.old, self.secrets, **kwargs)


def make_world(tmp_path: Path, make_config: Callable[..., Config]) -> World:
    """A booted old enclave of ``tmp_path/app`` (one static secret, one stored object) and the
    folder of a second version, ``tmp_path/app-v2``."""
    old_dir, new_dir = tmp_path / "app", tmp_path / "app-v2"
    old_dir.mkdir()
    (old_dir / "app.py").write_text("print('version 1')\n")
    new_dir.mkdir()
    (new_dir / "app.py").write_text("print('version 2')\n")
    config = make_config(old_dir, secrets=STATIC)
    plugins = get_plugin_manager()
    old = boot(config, plugins)
    assert old.storage is not None and old.kms_key_id is not None
    old.storage.put("visits", b'{"visits": 3}')
    return World(config, plugins, new_dir, old, old.kms_key_id)


def migrate(service: MigrationService, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST /v1/migrate and wait for the steps to stop; return its status and the progress
    (for a no-op, its answer)."""

    async def scenario() -> tuple[int, dict[str, Any]]:
        status, answer = await service.start(body)
        await service.wait()
        return status, (answer if status == 200 else await service.progress())

    return asyncio.run(scenario())


def crash_at(step: int) -> Callable[[int], None]:
    def hook(done: int) -> None:
        if done == step:
            raise Crash(f"crash after step {done}")

    return hook
