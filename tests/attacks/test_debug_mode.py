"""P3 of docs/threat-model.md: the all-zero PCR0 of a debug-mode enclave is never trusted.

The CLI's refusals (`enclave synth --pcr0 000…`, `enclave migrate --pcr0 000…`, `enclave config
validate` of a production file with `enclave.debug_mode: true`) are tested with each command
(tests/enclave_core/cli/test_synth_pcr0.py, test_migrate_cli.py, tests/enclave_core/test_config.py);
these are the enclave's own.
"""

from __future__ import annotations

from collections.abc import Callable

from enclave_core.config import Config
from enclave_core.plugin.manager import get_plugin_manager
from tests.attacks.host import Host
from tests.enclave_core.runtime.migration_fixtures import (
    STATIC,
    boot,
    control,
    make_migration,
)

ZERO = "00" * 48


def test_no_migration_key_is_made_for_the_debug_mode_pcr0(
    make_config: Callable[..., Config],
) -> None:
    migration = make_migration(make_config)
    keys_before = Host(migration.config).kms.key_ids()
    for target in (ZERO, "0x" + ZERO):
        result = control(migration.old).simulate_post(
            "/v1/migration-key", json={"target_pcr0": target, "migration_id": "m-1"}
        )
        assert result.status_code == 400, result.json
        assert "all zero" in result.json["description"]
    assert Host(migration.config).kms.key_ids() == keys_before


def test_nothing_is_exported_to_the_debug_mode_pcr0(make_config: Callable[..., Config]) -> None:
    migration = make_migration(make_config)
    key = migration.create_key()  # an honest key, for the real target
    migration.start(key_id=key.key_id, target=ZERO)  # then the host names the zero target
    result = migration.export()
    assert result.status_code == 403
    assert "all zero" in result.json["description"]
    assert Host(migration.config).secrets.get("Migration/Manifest") is None


def test_a_debug_mode_enclave_opens_no_key(make_config: Callable[..., Config]) -> None:
    config = make_config(
        secrets=STATIC, attestation={"backend": "simulated", "options": {"pcr0": ZERO}}
    )
    state = boot(config, get_plugin_manager())
    assert state.boot_error is not None
    assert (
        state.boot_error.startswith("boot stage attestation failed")
        and "debug mode" in state.boot_error
    )
    assert Host(config).secrets.get("KMSKeyID") is None
