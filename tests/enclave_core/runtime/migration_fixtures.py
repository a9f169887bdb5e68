"""Shared set-up of the migration tests: a booted old enclave, a new image, a migration key.

Everything is real and local: the local KMS, secrets and storage backends and the simulated NSM in
a temporary folder. The "new image" is the same app folder with changed files, so the simulated
NSM measures a new PCR0 exactly as a new EIF would have one. The old enclave keeps the PCR0 it
booted with, as a running enclave does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import falcon.testing
from enclave_plugins.local_kms import LocalKms
from enclave_plugins.simulated_attestation import SimulatedNsm
from loguru import logger

from enclave_core.config import Config
from enclave_core.plugin.backends import build_backend
from enclave_core.plugin.interfaces import Secrets
from enclave_core.plugin.manager import PluginManager, get_plugin_manager
from enclave_core.runtime.attested_kms import RecipientSession
from enclave_core.runtime.boot import retire_when_serving, run_boot
from enclave_core.runtime.migration_key import MigrationKey, create_migration_key
from enclave_core.runtime.own_routes import create_control_app
from enclave_core.runtime.state import RuntimeState

STATIC = {
    "static": [
        {"name": "signing_key", "env_var": "APP_SIGNING_KEY"},
        {"name": "api_key", "env_var": "APP_API_KEY"},
    ]
}
SECRET_NAMES = ("signing_key", "api_key")
DATA_KEYS = (*SECRET_NAMES, "StorageDEK")
OTHER_PCR0 = "0f" * 48
MIGRATION_ID = "m-1"


def boot(config: Config, plugins: PluginManager, *, serving: bool = True) -> RuntimeState:
    """Run every boot stage (no app) and return the state.

    :param serving: then do what the runtime does when its app first becomes ready (retire the
        migrated-from key), as when the app came up.
    """
    state = RuntimeState(config)
    asyncio.run(run_boot(state, plugins, None))
    if serving and state.boot_error is None:
        asyncio.run(retire_when_serving(state)())
    return state


def local_kms(config: Config) -> LocalKms:
    """The KMS the runtime uses, opened from outside (as the host, with the same role, would)."""
    return LocalKms(config.state_dir / "kms", root_pem=config.state_dir / "dev-root.pem")


def params(config: Config, plugins: PluginManager) -> Secrets:
    """The secrets backend the runtime uses."""
    secrets: Secrets = build_backend(config, plugins, "secrets")
    return secrets


def write_image(config: Config, version: str) -> str:
    """Make the app folder image ``version``; return the PCR0 the simulated NSM measures for it."""
    (config.app_dir / "app.py").write_text(f"print({version!r})\n")
    nsm = SimulatedNsm(state_dir=config.state_dir, app_dir=config.app_dir)
    return nsm.describe_pcr(0).data.hex()


def recipient_open(config: Config, pcr0: str, key_id: str, stored: str, context: Any) -> bytes:
    """Decrypt a stored blob as an enclave with ``pcr0`` would: through KMS Recipient."""
    nsm = SimulatedNsm(state_dir=config.state_dir, app_dir=config.app_dir, pcr0=bytes.fromhex(pcr0))
    session = RecipientSession(nsm)
    return session.decrypt(local_kms(config), key_id, base64.b64decode(stored), context)


def control(state: RuntimeState) -> falcon.testing.TestClient:
    """The runtime's control listener (what the supervisor reaches), in process."""
    return falcon.testing.TestClient(create_control_app(state))


@dataclass
class Migration:
    """An old enclave booted on image v1, and the new image v2 the migration targets."""

    config: Config
    plugins: PluginManager
    old: RuntimeState
    old_pcr0: str
    target_pcr0: str

    @property
    def secrets(self) -> Secrets:
        """The parameter store."""
        return params(self.config, self.plugins)

    def create_key(self, target: str | None = None, now: datetime | None = None) -> MigrationKey:
        """Step 2: the old enclave creates the migration key for ``target`` (default v2)."""
        return create_migration_key(
            self.old,
            target_pcr0=target or self.target_pcr0,
            migration_id=MIGRATION_ID,
            now=now,
        )

    def start(self, key_id: str | None = None, target: str | None = None) -> str:
        """Steps 2 to 4: the old enclave's key (or ``key_id``), then the migration parameters."""
        key_id = key_id or self.create_key().key_id
        secrets = self.secrets
        secrets.put("MigrationKMSKeyID", key_id)
        secrets.put("MigrationOldKMSKeyID", self.old.kms_key_id or "")
        secrets.put("MigrationTargetPCR0", target or self.target_pcr0)
        return key_id

    def export(self) -> falcon.testing.Result:
        """Step 5: ``POST /v1/export-key`` on the old enclave's control listener."""
        return control(self.old).simulate_post("/v1/export-key")

    def adopt(self, key_id: str) -> None:
        """Step 7 as the supervisor does it: the migrated blobs and their link become live."""
        secrets = self.secrets
        for name in DATA_KEYS:
            blob = secrets.get(f"Migration/{name}/Ciphertext")
            assert blob is not None, name
            secrets.put(f"{name}/Ciphertext", blob)
        link = secrets.get("Migration/Manifest")
        assert link is not None
        secrets.put("CiphertextManifest", link)
        secrets.put("KMSKeyID", key_id)

    def clean_up(self) -> None:
        """Step 9: the migration's parameters go (the checkpoint would stay)."""
        secrets = self.secrets
        for name in ["MigrationKMSKeyID", "MigrationTargetPCR0", *secrets.list("Migration/")]:
            secrets.delete(name)

    def migrate(self) -> RuntimeState:
        """Steps 2 to 9: everything, the new image booted in between; return its state."""
        key_id = self.start()
        result = self.export()
        assert result.status_code == 200, result.json
        self.adopt(key_id)
        new = boot(self.config, self.plugins)
        self.clean_up()
        return new


def make_migration(make_config: Callable[..., Config], **overrides: Any) -> Migration:
    """Boot the old enclave on image v1 (storing an object), then make the app folder image v2."""
    plugins = get_plugin_manager()
    config = make_config(secrets=STATIC, **overrides)
    old_pcr0 = write_image(config, "version 1")
    old = boot(config, plugins)
    assert old.boot_error is None and old.pcr0 == old_pcr0, old.boot_error
    assert old.storage is not None
    old.storage.put("visits", b"41")
    target = write_image(config, "version 2")  # the running old NSM keeps its PCR0
    assert target != old_pcr0
    return Migration(config, plugins, old, old_pcr0, target)


def link_body(secrets: Secrets, param: str = "Migration/Manifest") -> dict[str, Any]:
    """The body of a stored chain link (or manifest) record."""
    text = secrets.get(param)
    assert text is not None, param
    body: dict[str, Any] = json.loads(text)["body"]
    return body


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Collect every log line written inside the block, serialized as the runtime writes them."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), serialize=True, level="DEBUG")
    try:
        yield lines
    finally:
        logger.remove(sink)


def no_secret_in(lines: list[str], state: RuntimeState) -> None:
    """Assert no static secret value and no form of the storage data key appears in ``lines``."""
    text = "\n".join(lines)
    assert state.storage_dek is not None
    dek = state.storage_dek
    forbidden = [
        *state.static_env.values(),
        dek.hex(),
        base64.b64encode(dek).decode(),
        json.dumps(list(dek)),
    ]
    for value in forbidden:
        assert value not in text
