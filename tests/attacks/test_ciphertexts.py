"""P2 of docs/threat-model.md: no principal keeps kms:Encrypt on a live key, and the enclave
never adopts a ciphertext it cannot trace to itself or to an attested predecessor."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from enclave_core.config import Config
from enclave_core.errors import AccessDenied
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.runtime.datakeys import static_secret_context
from tests.attacks.host import Host
from tests.enclave_core.runtime.migration_fixtures import (
    STATIC,
    boot,
    make_migration,
    write_image,
)

CHOSEN = bytes(range(32))  # the secret value the host would like the app to run with


def test_ciphertexts_made_before_the_lock_are_not_adopted(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(secrets=STATIC)
    write_image(config, "version 1")
    host = Host(config)
    key = host.open_key()  # open: the host may Encrypt, for now
    host.forge_secret(key, "signing_key", CHOSEN)
    host.secrets.put("KMSKeyID", key)
    state = boot(config, get_plugin_manager())
    # The enclave locked the key (nobody can Encrypt any more) but never adopts the host's blob.
    assert state.boot_error is not None, "the enclave adopted a ciphertext the host made"
    assert "boot stage static_secrets failed" in state.boot_error
    assert "signing_key/Ciphertext" in state.boot_error
    assert CHOSEN.hex() not in state.static_env.values()
    with pytest.raises(AccessDenied):
        host.kms.encrypt(key, CHOSEN, static_secret_context(config.name, "signing_key"))


def test_a_forged_secret_is_refused_after_a_migration(make_config: Callable[..., Config]) -> None:
    migration = make_migration(make_config)
    new = migration.migrate()
    assert new.boot_error is None, new.boot_error
    genuine = new.static_env["APP_SIGNING_KEY"]
    host = Host(migration.config)
    # The export window is still open: the host can make a ciphertext under the new key...
    host.forge_secret(str(new.kms_key_id), "signing_key", CHOSEN)
    again = boot(migration.config, migration.plugins)  # enclave stop && enclave start
    # ...which the enclave never adopts.
    assert again.boot_error is not None, "the enclave adopted the host's ciphertext"
    assert "signing_key/Ciphertext" in again.boot_error
    assert "cannot be trusted" in again.boot_error
    assert again.static_env.get("APP_SIGNING_KEY") not in (CHOSEN.hex(),)
    assert genuine != CHOSEN.hex()


def test_a_forged_export_is_refused_at_the_first_boot_after_a_migration(
    make_config: Callable[..., Config],
) -> None:
    """The host swaps an exported ciphertext between steps 6 and 7: not the one the link names."""
    migration = make_migration(make_config)
    key_id = migration.start()
    assert migration.export().status_code == 200
    host = Host(migration.config)
    blob = host.kms.encrypt(
        key_id, CHOSEN, static_secret_context(migration.config.name, "signing_key")
    )
    host.secrets.put("Migration/signing_key/Ciphertext", base64.b64encode(blob).decode())
    migration.adopt(key_id)
    new = boot(migration.config, migration.plugins)
    assert new.boot_error is not None
    assert "signing_key/Ciphertext" in new.boot_error
    assert new.static_env == {}


def test_the_export_window_closes_for_ever(make_config: Callable[..., Config]) -> None:
    migration = make_migration(make_config)
    host = Host(migration.config)
    context = static_secret_context(migration.config.name, "signing_key")
    # A key made two hours ago has an export window that closed an hour ago.
    old_key = migration.create_key(now=datetime.now(UTC) - timedelta(hours=2))
    with pytest.raises(AccessDenied):
        host.kms.encrypt(old_key.key_id, CHOSEN, context)
    migration.start(key_id=old_key.key_id)
    result = migration.export()
    assert result.status_code == 403
    assert "export window closed" in result.json["description"]


def test_inside_the_window_only_the_app_context_may_be_encrypted(
    make_config: Callable[..., Config],
) -> None:
    migration = make_migration(make_config)
    host = Host(migration.config)
    key = migration.create_key()
    with pytest.raises(AccessDenied):
        host.kms.encrypt(key.key_id, CHOSEN, {"app": "another-app"})
    policy = host.kms.get_key_policy(key.key_id)
    encrypt = [s for s in policy["Statement"] if "kms:Encrypt" in str(s["Action"])]
    assert [s["Sid"] for s in encrypt] == ["EnclaveExportWindow"]
    assert "DateLessThan" in encrypt[0]["Condition"]
