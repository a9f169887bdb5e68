"""The migration chain link, and the new enclave's boot after a migration.

The boot tests play a whole migration with the real local backends: the old enclave (image v1)
exports, the supervisor's step 7 is done by hand (the migrated blobs become the live ones and
``KMSKeyID`` names the new key), then a runtime on image v2 boots in the same state directory.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import falcon.testing
import pytest
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.config import BackendSettings, Config
from enclave_core.crypto.aws_root import aws_nitro_root, load_root_pem
from enclave_core.errors import AttestationError
from enclave_core.runtime.chain import (
    attestation_root,
    migration_binding,
    verify_chain_link,
)
from enclave_core.runtime.export import export_keys
from enclave_core.runtime.public import create_public_app
from tests.enclave_core.runtime.migration_fixtures import (
    OTHER_PCR0,
    Migration,
    boot,
    captured_logs,
    local_kms,
    make_migration,
    no_secret_in,
    write_image,
)

OLD = "a1" * 48
NEW = "b2" * 48
KEY = "1234abcd-0000-4000-8000-000000000001"


@pytest.fixture
def migration(make_config: Callable[..., Config]) -> Migration:
    return make_migration(make_config)


def migrated(migration: Migration) -> str:
    """Export from the old enclave and adopt as the supervisor's step 7; return the new key."""
    key_id = migration.start()
    export_keys(migration.old)
    migration.adopt(key_id)
    return key_id


# ------------------------------------------------------------------ the binding and the check


def test_the_binding_is_the_sha256_of_the_documented_string() -> None:
    text = f"simple-enclave-migration-v1\n{OLD}\n{KEY}\n{NEW}\n"
    assert migration_binding(OLD, KEY, NEW) == hashlib.sha256(text.encode("utf-8")).digest()
    assert migration_binding(OLD.upper(), KEY, " " + NEW) == migration_binding(OLD, KEY, NEW)
    variants = {
        migration_binding(OLD, KEY, NEW),
        migration_binding(NEW, KEY, OLD),
        migration_binding(OLD, KEY + "2", NEW),
        migration_binding(OLD, KEY, OTHER_PCR0),
    }
    assert len(variants) == 4
    with pytest.raises(AttestationError, match="one line"):
        migration_binding(OLD, f"{KEY}\n{NEW}", NEW)
    with pytest.raises(AttestationError, match="target PCR0: expected 96 hex"):
        migration_binding(OLD, KEY, "ab")


def test_the_root_is_the_dev_root_only_for_the_simulated_nsm(
    make_config: Callable[..., Config],
) -> None:
    config = make_config()
    SimulatedNsm(state_dir=config.state_dir, app_dir=config.app_dir).attestation(nonce=b"x")
    dev = attestation_root(config)
    assert dev == load_root_pem(config.state_dir / "dev-root.pem") and dev != aws_nitro_root()
    nitro = dataclasses.replace(config, attestation=BackendSettings("nitro"))
    assert attestation_root(nitro) == aws_nitro_root()


def test_verify_chain_link_checks_root_pcr0_binding_and_debug_mode(
    make_config: Callable[..., Config],
) -> None:
    config = make_config()
    nsm = SimulatedNsm(state_dir=config.state_dir, app_dir=config.app_dir, pcr0=bytes.fromhex(OLD))
    document = nsm.attestation(user_data=migration_binding(OLD, KEY, NEW), nonce=b"n" * 32)
    root = load_root_pem(config.state_dir / "dev-root.pem")
    verified = verify_chain_link(document, previous_pcr0=OLD, key_id=KEY, pcr0=NEW, root=root)
    assert verified.pcrs[0].hex() == OLD
    with pytest.raises(AttestationError) as exc:
        verify_chain_link(document, previous_pcr0=NEW, key_id=KEY, pcr0=NEW, root=root)
    assert str(exc.value) == f"chain link: the document's PCR0 {OLD} is not the previous PCR0 {NEW}"
    with pytest.raises(AttestationError, match="chain link: the previous enclave's document: "):
        verify_chain_link(document, previous_pcr0=OLD, key_id=KEY, pcr0=NEW, root=aws_nitro_root())
    with pytest.raises(AttestationError, match="chain link: the previous enclave's document"):
        verify_chain_link(document[:-1], previous_pcr0=OLD, key_id=KEY, pcr0=NEW, root=root)
    debug = SimulatedNsm(state_dir=config.state_dir, app_dir=config.app_dir, pcr0=bytes(48))
    zero = "00" * 48
    document = debug.attestation(user_data=migration_binding(zero, KEY, NEW))
    with pytest.raises(AttestationError, match="debug-mode"):
        verify_chain_link(document, previous_pcr0=zero, key_id=KEY, pcr0=NEW, root=root)
    unbound = nsm.attestation(user_data=None)
    with pytest.raises(AttestationError, match="user_data does not bind"):
        verify_chain_link(unbound, previous_pcr0=OLD, key_id=KEY, pcr0=NEW, root=root)


# ------------------------------------------------------------------ the new enclave's boot


def test_a_fresh_enclave_is_genesis(migration: Migration) -> None:
    assert migration.old.previous_pcr0 == "genesis"
    assert migration.old.enclave_info()["previous_pcr0_attestation"] is None


def test_the_new_image_boots_with_the_same_secrets_and_the_chain_link(
    migration: Migration,
) -> None:
    key_id = migrated(migration)
    old_key = migration.old.kms_key_id
    assert old_key is not None
    with captured_logs() as lines:
        new = boot(migration.config, migration.plugins)
    assert new.boot_error is None and new.stage == "app"
    assert new.pcr0 == migration.target_pcr0 and new.kms_key_id == key_id
    assert new.static_env == migration.old.static_env
    assert new.storage_dek == migration.old.storage_dek
    assert new.storage is not None and new.storage.get("visits").data == b"41"
    # enclave-info (signed, on the public listener) reports the verified chain link.
    info = falcon.testing.TestClient(create_public_app(new)).simulate_get("/v1/enclave-info").json
    stored = migration.secrets.get("MigrationPreviousPCR0Attestation")
    assert info["previous_pcr0"] == migration.old_pcr0
    assert info["previous_pcr0_attestation"] == stored
    # The old key is retired: pending deletion in 7 days, its parameter gone.
    old_info = local_kms(migration.config).describe_key(old_key)
    assert old_info.state == "PendingDeletion" and old_info.deletion_date is not None
    when = datetime.fromisoformat(old_info.deletion_date)
    assert abs(when - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=5)
    assert migration.secrets.get("MigrationOldKMSKeyID") is None
    assert local_kms(migration.config).describe_key(key_id).state == "Enabled"
    no_secret_in(lines, new)
    assert any("migration chain link verified" in line for line in lines)


def test_the_old_image_cannot_run_on_the_new_key(migration: Migration) -> None:
    key_id = migrated(migration)
    write_image(migration.config, "version 1")  # roll the files back: the old PCR0 again
    state = boot(migration.config, migration.plugins)
    error = state.health()[1]["error"]
    assert error.startswith(
        f"boot stage kms_key failed: KMS key {key_id} is locked to PCR0 "
        f"{migration.target_pcr0[:16]}…, not this enclave's PCR0 {migration.old_pcr0[:16]}…"
    )
    assert state.static_env == {} and state.storage_dek is None
    # Boot never got far enough to retire the old key.
    assert migration.secrets.get("MigrationOldKMSKeyID") == migration.old.kms_key_id


def test_a_replayed_chain_document_is_reported_as_null(migration: Migration) -> None:
    key_id = migrated(migration)
    # A document the old image made for another migration (another key): valid, but not this.
    old_nsm = SimulatedNsm(
        state_dir=migration.config.state_dir,
        app_dir=migration.config.app_dir,
        pcr0=bytes.fromhex(migration.old_pcr0),
    )
    replayed = old_nsm.attestation(
        user_data=migration_binding(migration.old_pcr0, "another-key", migration.target_pcr0)
    )
    migration.secrets.put(
        "MigrationPreviousPCR0Attestation", base64.b64encode(replayed).decode("ascii")
    )
    with captured_logs() as lines:
        new = boot(migration.config, migration.plugins)
    assert new.boot_error is None and new.kms_key_id == key_id  # a broken link is not fatal
    info = new.enclave_info()
    assert (info["previous_pcr0"], info["previous_pcr0_attestation"]) == (None, None)
    warnings = [json.loads(line)["record"] for line in lines if "does not verify" in line]
    assert len(warnings) == 1 and warnings[0]["level"]["name"] == "WARNING"
    assert "user_data does not bind" in warnings[0]["extra"]["error"]
    # The old key is still retired: every secret opened under the new one.
    assert migration.secrets.get("MigrationOldKMSKeyID") is None


def test_a_missing_chain_document_is_reported_as_null(migration: Migration) -> None:
    migrated(migration)
    migration.secrets.delete("MigrationPreviousPCR0Attestation")
    new = boot(migration.config, migration.plugins)
    assert new.boot_error is None and new.previous_pcr0 is None


def test_an_old_key_already_pending_deletion_counts_as_done(migration: Migration) -> None:
    migrated(migration)
    old_key = migration.old.kms_key_id or ""
    kms = local_kms(migration.config)
    first = kms.schedule_key_deletion(old_key, 30)
    new = boot(migration.config, migration.plugins)
    assert new.boot_error is None
    assert kms.describe_key(old_key).deletion_date == first.deletion_date  # not rescheduled
    assert migration.secrets.get("MigrationOldKMSKeyID") is None


def test_the_key_in_use_is_never_retired(migration: Migration) -> None:
    # Mid-migration (before step 7) the old enclave reboots: MigrationOldKMSKeyID is its own key.
    migration.start()
    write_image(migration.config, "version 1")
    state = boot(migration.config, migration.plugins)
    assert state.boot_error is None and state.kms_key_id == migration.old.kms_key_id
    assert local_kms(migration.config).describe_key(state.kms_key_id).state == "Enabled"
    assert migration.secrets.get("MigrationOldKMSKeyID") == state.kms_key_id
