"""P4 of docs/threat-model.md: a signed image hands its secrets only to images signed alike."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.config import Config
from enclave_core.errors import AccessDenied
from enclave_core.runtime.attested_kms import RecipientSession
from enclave_core.runtime.datakeys import static_secret_context
from tests.attacks.host import Host
from tests.enclave_core.runtime.migration_fixtures import control, local_kms, make_migration

OWNER = "8a" * 48  # PCR8 of the owner's signing certificate
OTHER = "8b" * 48


@pytest.fixture
def signed(make_config: Callable[..., Config]):  # type: ignore[no-untyped-def]
    return make_migration(
        make_config, attestation={"backend": "simulated", "options": {"pcr8": OWNER}}
    )


def test_the_migration_key_pins_the_owners_pcr8(signed) -> None:  # type: ignore[no-untyped-def]
    key = signed.create_key()
    assert key.target_pcr8 == OWNER
    policy = Host(signed.config).kms.get_key_policy(key.key_id)
    condition = policy["Statement"][0]["Condition"]["StringEqualsIgnoreCase"]
    assert condition == {
        "kms:RecipientAttestation:PCR0": signed.target_pcr0,
        "kms:RecipientAttestation:PCR8": OWNER,
    }


def test_a_target_signed_by_someone_else_is_refused(signed) -> None:  # type: ignore[no-untyped-def]
    result = control(signed.old).simulate_post(
        "/v1/migration-key",
        json={"target_pcr0": signed.target_pcr0, "target_pcr8": OTHER, "migration_id": "m-1"},
    )
    assert result.status_code == 403
    assert "signed with another certificate" in result.json["description"]


def test_an_image_signed_by_someone_else_cannot_decrypt_the_export(signed) -> None:  # type: ignore[no-untyped-def]
    """Whatever the host announces, the key opens only for the owner's signature."""
    key_id = signed.start()
    assert signed.export().status_code == 200
    stored = Host(signed.config).secrets.get("Migration/signing_key/Ciphertext")
    assert stored is not None
    context = static_secret_context(signed.config.name, "signing_key")
    blob, kms = base64.b64decode(stored), local_kms(signed.config)

    def open_as(pcr8: str) -> bytes:
        nsm = SimulatedNsm(
            state_dir=signed.config.state_dir,
            app_dir=signed.config.app_dir,
            pcr0=bytes.fromhex(signed.target_pcr0),
            pcr8=bytes.fromhex(pcr8),
        )
        return RecipientSession(nsm).decrypt(kms, key_id, blob, context)

    with pytest.raises(AccessDenied):
        open_as(OTHER)
    assert len(open_as(OWNER)) == 32
