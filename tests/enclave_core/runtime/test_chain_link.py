"""The new enclave's boot after a migration: the link, the manifest, the chain, the old key.

The boot tests play a whole migration with the real local backends: the old enclave (image v1)
makes the key and exports, the supervisor's step 7 is done by hand (the migrated blobs and their
link become the live ones and ``KMSKeyID`` names the new key), then a runtime on image v2 boots
in the same state directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import falcon.testing
import pytest

from enclave_core.config import Config
from enclave_core.crypto.attested_record import make_record, read_record, store_record
from enclave_core.runtime.boot import retire_when_serving
from enclave_core.runtime.export import export_keys
from enclave_core.runtime.own_routes import create_public_app
from enclave_core.runtime.trust import trust_root
from tests.enclave_core.runtime.migration_fixtures import (
    Migration,
    boot,
    captured_logs,
    link_body,
    local_kms,
    make_migration,
    no_secret_in,
    write_image,
)


@pytest.fixture
def migration(make_config: Callable[..., Config]) -> Migration:
    return make_migration(make_config)


def migrated(migration: Migration) -> str:
    """Export from the old enclave and adopt as the supervisor's step 7; return the new key."""
    key_id = migration.start()
    export_keys(migration.old)
    migration.adopt(key_id)
    return key_id


def test_a_fresh_enclave_is_genesis(migration: Migration) -> None:
    info = migration.old.enclave_info()
    assert (info["previous_pcr0"], info["key_origin"]) == ("genesis", "genesis")
    assert (info["migration_chain"], info["migration_chain_complete"]) == ([], True)
    assert info["previous_pcr0_attestation"] is None
    manifest = link_body(migration.secrets, "CiphertextManifest")
    assert manifest["previous_pcr0"] == "genesis" and manifest["pcr0"] == migration.old_pcr0


def test_the_new_image_boots_with_the_same_secrets_and_the_chain_link(
    migration: Migration,
) -> None:
    key_id = migrated(migration)
    link = migration.secrets.get("Migration/Manifest")
    old_key = migration.old.kms_key_id
    assert old_key is not None and link is not None
    with captured_logs() as lines:
        new = boot(migration.config, migration.plugins)
    assert new.boot_error is None and new.stage == "app"
    assert new.pcr0 == migration.target_pcr0 and new.kms_key_id == key_id
    assert new.static_env == migration.old.static_env
    assert new.storage_dek == migration.old.storage_dek
    assert new.storage is not None and new.storage.get("visits").data == b"41"
    # The link is kept as Chain/1, and this image's own manifest replaced it.
    assert migration.secrets.get("Chain/1") is not None
    manifest = link_body(migration.secrets, "CiphertextManifest")
    assert (manifest["pcr0"], manifest["previous_pcr0"], manifest["chain_length"]) == (
        migration.target_pcr0,
        migration.old_pcr0,
        1,
    )
    # enclave-info (signed, on the public listener) reports the verified chain.
    info = falcon.testing.TestClient(create_public_app(new)).simulate_get("/v1/enclave-info").json
    assert info["previous_pcr0"] == migration.old_pcr0
    assert info["key_origin"] == "migration" and info["migration_chain_complete"] is True
    [shown] = info["migration_chain"]
    kept = read_record(migration.secrets, "Chain/1", "link", root=trust_root(migration.config))
    assert kept is not None and shown == kept.as_json()
    assert info["previous_pcr0_attestation"] == shown["attestation"]
    # The old key is retired: pending deletion in 7 days, its parameter gone.
    old_info = local_kms(migration.config).describe_key(old_key)
    assert old_info.state == "PendingDeletion" and old_info.deletion_date is not None
    when = datetime.fromisoformat(old_info.deletion_date)
    assert abs(when - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=5)
    assert migration.secrets.get("MigrationOldKMSKeyID") is None
    assert local_kms(migration.config).describe_key(key_id).state == "Enabled"
    no_secret_in(lines, new)
    assert any("migrated ciphertexts adopted" in line for line in lines)
    assert any("migration chain verified" in line for line in lines)


def test_the_new_image_boots_again_on_its_own_manifest(migration: Migration) -> None:
    migrated(migration)
    first = boot(migration.config, migration.plugins)
    second = boot(migration.config, migration.plugins)
    assert second.boot_error is None
    assert second.static_env == first.static_env == migration.old.static_env
    assert second.enclave_info()["migration_chain"] == first.enclave_info()["migration_chain"]


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


def test_a_link_made_for_another_key_is_refused(migration: Migration) -> None:
    """A genuine link from the old image, but for another migration key: never adopted."""
    migrated(migration)
    body = link_body(migration.secrets)
    assert migration.old.attestation is not None
    body["key_id"] = "another-key"
    forged = make_record(migration.old.attestation, "link", body)  # really made by the old image
    store_record(migration.secrets, "CiphertextManifest", forged)
    new = boot(migration.config, migration.plugins)
    assert new.boot_error is not None
    assert "the migration link is for another key" in new.boot_error
    assert new.static_env == {}


def test_a_link_naming_another_successor_is_refused(migration: Migration) -> None:
    migrated(migration)
    body = link_body(migration.secrets)
    assert migration.old.attestation is not None
    body["to_pcr0"] = "0f" * 48
    store_record(
        migration.secrets,
        "CiphertextManifest",
        make_record(migration.old.attestation, "link", body),
    )
    new = boot(migration.config, migration.plugins)
    assert new.boot_error is not None and "names another successor" in new.boot_error


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


def test_the_old_key_lives_until_the_new_app_serves(migration: Migration) -> None:
    """Booted but not yet serving, the new enclave leaves the old key alone: a rollback to the
    old image (step 8) still needs it."""
    migrated(migration)
    old_key = migration.old.kms_key_id or ""
    new = boot(migration.config, migration.plugins, serving=False)
    assert new.boot_error is None and new.stage == "app"
    assert local_kms(migration.config).describe_key(old_key).state == "Enabled"
    assert migration.secrets.get("MigrationOldKMSKeyID") == old_key
    asyncio.run(retire_when_serving(new)())  # the app is ready
    assert local_kms(migration.config).describe_key(old_key).state == "PendingDeletion"
    assert migration.secrets.get("MigrationOldKMSKeyID") is None
