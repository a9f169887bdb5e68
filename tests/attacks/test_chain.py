"""P5 of docs/threat-model.md: the migration chain cannot be hidden by deleting a parameter."""

from __future__ import annotations

from collections.abc import Callable

from enclave_core.config import Config
from enclave_core.protocol.migration_chain import verify_links
from enclave_core.runtime.trust import trust_root
from tests.attacks.host import Host
from tests.enclave_core.runtime.migration_fixtures import (
    Migration,
    boot,
    make_migration,
    write_image,
)


def migrated(make_config: Callable[..., Config]) -> tuple[Migration, object]:
    migration = make_migration(make_config)
    new = migration.migrate()
    assert new.boot_error is None, new.boot_error
    return migration, new


def test_deleting_the_previous_pcr0_does_not_hide_the_chain(
    make_config: Callable[..., Config],
) -> None:
    migration, _ = migrated(make_config)
    host = Host(migration.config)
    for name in ("MigrationPreviousPCR0", "MigrationPreviousPCR0Attestation"):
        host.secrets.delete(name)
    again = boot(migration.config, migration.plugins)  # enclave stop && enclave start
    assert again.boot_error is None, again.boot_error
    info = again.enclave_info()
    assert info["previous_pcr0"] == migration.old_pcr0  # not "genesis"
    assert info["key_origin"] == "migration"
    assert info["migration_chain_complete"] is True
    assert [link["body"]["from_pcr0"] for link in info["migration_chain"]] == [migration.old_pcr0]


def test_deleting_the_manifest_stops_the_enclave_rather_than_make_it_genesis(
    make_config: Callable[..., Config],
) -> None:
    migration, _ = migrated(make_config)
    Host(migration.config).secrets.delete("CiphertextManifest")
    again = boot(migration.config, migration.plugins)
    assert again.boot_error is not None
    assert "made by a migration" in again.boot_error
    assert again.previous_pcr0 is None


def test_deleting_a_link_makes_the_chain_unprovable_not_shorter(
    make_config: Callable[..., Config],
) -> None:
    migration, _ = migrated(make_config)
    Host(migration.config).secrets.delete("Chain/1")
    again = boot(migration.config, migration.plugins)
    assert again.boot_error is None, again.boot_error
    info = again.enclave_info()
    assert info["previous_pcr0"] == migration.old_pcr0
    assert info["migration_chain_complete"] is False
    assert info["migration_chain"] == []
    assert info["previous_pcr0_attestation"] is None


def test_two_migrations_make_a_chain_of_two_links(make_config: Callable[..., Config]) -> None:
    migration, second = migrated(make_config)
    # v2 is running; migrate it to v3 the same way.
    third_pcr0 = write_image(migration.config, "version 3")
    onward = Migration(
        migration.config,
        migration.plugins,
        second,
        migration.target_pcr0,
        third_pcr0,  # type: ignore[arg-type]
    )
    third = onward.migrate()
    assert third.boot_error is None, third.boot_error
    info = third.enclave_info()
    chain = info["migration_chain"]
    assert [(c["body"]["from_pcr0"], c["body"]["to_pcr0"]) for c in chain] == [
        (migration.old_pcr0, migration.target_pcr0),
        (migration.target_pcr0, third_pcr0),
    ]
    report = verify_links(
        chain, root=trust_root(migration.config), pcr0=third_pcr0, key_id=info["kms_key_id"]
    )
    assert report.complete and len(report.links) == 2
    # The secrets and the data came all the way.
    assert third.static_env == migration.old.static_env
    assert third.storage is not None and third.storage.get("visits").data == b"41"
