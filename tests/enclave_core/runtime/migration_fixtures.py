"""Shared set-up of the migration tests: a booted old enclave, a new image, a target key.

Everything is real and local: the local KMS, secrets and storage backends and the simulated NSM in
a temporary folder. The "new image" is the same app folder with changed files, so the simulated
NSM measures a new PCR0 exactly as a new EIF would have one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from enclave_plugins.local_kms import LocalKms
from enclave_plugins.simulated_attestation import SimulatedNsm
from loguru import logger

from enclave_core.backends import build_backend
from enclave_core.config import Config
from enclave_core.interfaces import Secrets
from enclave_core.kms_policy import migration_target_policy
from enclave_core.manager import Plugins, get_plugin_manager
from enclave_core.runtime.boot import run_boot
from enclave_core.runtime.recipient import RecipientSession
from enclave_core.runtime.state import RuntimeState

STATIC = {
    "static": [
        {"name": "signing_key", "env_var": "APP_SIGNING_KEY"},
        {"name": "api_key", "env_var": "APP_API_KEY"},
    ]
}
SECRET_NAMES = ("signing_key", "api_key")
OTHER_PCR0 = "0f" * 48


def boot(config: Config, plugins: Plugins) -> RuntimeState:
    """Run every boot stage (no app) and return the state."""
    state = RuntimeState(config)
    asyncio.run(run_boot(state, plugins, None))
    return state


def local_kms(config: Config) -> LocalKms:
    """The KMS the runtime uses, opened from outside (as the supervisor would)."""
    return LocalKms(config.state_dir / "kms", root_pem=config.state_dir / "dev-root.pem")


def params(config: Config, plugins: Plugins) -> Secrets:
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


def policy_for(config: Config, target_pcr0: str) -> dict[str, Any]:
    """The honest final policy of a migration's new key (the supervisor's step 3)."""
    principal = local_kms(config).caller_arn()
    return migration_target_policy(pcr0_hex=target_pcr0, principal_arn=principal, app=config.name)


def new_key(config: Config, policy: dict[str, Any]) -> str:
    """Create a key carrying ``policy`` (applied with the lockout bypass, as step 3 does)."""
    kms = local_kms(config)
    key_id = kms.create_key(description="migration target").key_id
    kms.put_key_policy(key_id, policy, bypass_lockout_safety_check=True)
    return key_id


@dataclass
class Migration:
    """An old enclave booted on image v1, and the new image v2 the migration targets."""

    config: Config
    plugins: Plugins
    old: RuntimeState
    old_pcr0: str
    target_pcr0: str

    @property
    def secrets(self) -> Secrets:
        """The parameter store."""
        return params(self.config, self.plugins)

    def start(self, policy: dict[str, Any] | None = None, target: str | None = None) -> str:
        """Steps 2 to 4: the new key with ``policy`` (default honest) and the parameters."""
        key_id = new_key(self.config, policy or policy_for(self.config, self.target_pcr0))
        secrets = self.secrets
        secrets.put("MigrationKMSKeyID", key_id)
        secrets.put("MigrationOldKMSKeyID", self.old.kms_key_id or "")
        secrets.put("MigrationTargetPCR0", target or self.target_pcr0)
        return key_id

    def adopt(self, key_id: str) -> None:
        """Step 7 as the supervisor does it: the migrated blobs become the live ones."""
        secrets = self.secrets
        for name in (*SECRET_NAMES, "StorageDEK"):
            blob = secrets.get(f"Migration/{name}/Ciphertext")
            assert blob is not None, name
            secrets.put(f"{name}/Ciphertext", blob)
        secrets.put("KMSKeyID", key_id)


def make_migration(make_config: Callable[..., Config]) -> Migration:
    """Boot the old enclave on image v1 (storing an object), then make the app folder image v2."""
    plugins = get_plugin_manager()
    config = make_config(secrets=STATIC)
    old_pcr0 = write_image(config, "version 1")
    old = boot(config, plugins)
    assert old.boot_error is None and old.pcr0 == old_pcr0
    assert old.storage is not None
    old.storage.put("visits", b"41")
    target = write_image(config, "version 2")  # the running old NSM keeps its PCR0
    assert target != old_pcr0
    return Migration(config, plugins, old, old_pcr0, target)


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
