"""POST /v1/export-key: it exports only to a key that only the new image can ever use.

Real local backends (local KMS, secrets and storage, simulated NSM) in a temporary folder: an old
enclave boots on image v1, the app folder then becomes image v2 (a new PCR0), and the tests play
the supervisor's steps 2 to 5 against the old enclave's control app.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import falcon.testing
import pytest

from enclave_core.config import Config
from enclave_core.crypto.attestation import verify_document
from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.errors import AccessDenied, AttestationError, CryptoError
from enclave_core.kms_policy import default_policy
from enclave_core.runtime.boot import static_secret_context, storage_dek_context
from enclave_core.runtime.chain import migration_binding, verify_chain_link
from enclave_core.runtime.public import create_control_app, create_public_app, is_own_path
from enclave_core.runtime.state import RuntimeState
from tests.enclave_core.runtime.migration_fixtures import (
    OTHER_PCR0,
    SECRET_NAMES,
    Migration,
    captured_logs,
    local_kms,
    make_migration,
    no_secret_in,
    policy_for,
    recipient_open,
)

EXPORT = "/v1/export-key"
ADMIN = "arn:aws:iam::000000000000:role/admin"


@pytest.fixture
def migration(make_config: Callable[..., Config]) -> Migration:
    return make_migration(make_config)


def export(state: RuntimeState, body: str | None = None) -> falcon.testing.Result:
    client = falcon.testing.TestClient(create_control_app(state))
    return client.simulate_post(EXPORT, body=body)


def migration_params(migration: Migration) -> list[str]:
    return [n for n in migration.secrets.list() if n.startswith(("Migration/", "MigrationPrev"))]


def refused(migration: Migration, **start: Any) -> str:
    """Start a migration, export, expect 403 with nothing written; return the description."""
    migration.start(**start)
    result = export(migration.old)
    assert result.status_code == 403, result.json
    assert result.json["title"] == "Export refused"
    assert migration_params(migration) == []
    return str(result.json["description"])


def with_statement(migration: Migration, statement: dict[str, Any]) -> dict[str, Any]:
    policy = policy_for(migration.config, migration.target_pcr0)
    policy["Statement"].append(statement)
    return policy


# ------------------------------------------------------------------ refusals


def test_without_a_migration_in_progress_it_is_409(migration: Migration) -> None:
    result = export(migration.old)
    assert (result.status_code, result.json) == (
        409,
        {"title": "Conflict", "description": "no migration in progress"},
    )
    # A new key alone is not a migration: the target image is unknown.
    migration.secrets.put("MigrationKMSKeyID", "some-key")
    assert export(migration.old).status_code == 409
    assert migration_params(migration) == []


def test_a_target_key_the_account_admin_can_change_is_refused(migration: Migration) -> None:
    # What CreateKey gives by default: the account root may do everything, policy changes too.
    description = refused(migration, policy=default_policy("000000000000"))
    assert description.startswith("target key ")
    assert "policy can be changed" in description
    assert "arn:aws:iam::000000000000:root call kms:PutKeyPolicy" in description


def test_a_target_key_with_put_key_policy_for_an_admin_is_refused(migration: Migration) -> None:
    policy = with_statement(
        migration,
        {
            "Sid": "KeyAdmin",
            "Effect": "Allow",
            "Principal": {"AWS": ADMIN},
            "Action": ["kms:PutKeyPolicy", "kms:DescribeKey"],
            "Resource": "*",
        },
    )
    description = refused(migration, policy=policy)
    assert f"statement 'KeyAdmin' (#4) lets {ADMIN} call kms:PutKeyPolicy" in description


def test_a_target_key_that_grants_create_grant_is_refused(migration: Migration) -> None:
    policy = with_statement(
        migration,
        {"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:CreateGrant"},
    )
    assert f"lets {ADMIN} call kms:CreateGrant" in refused(migration, policy=policy)


def test_a_target_key_that_decrypts_without_attestation_is_refused(migration: Migration) -> None:
    policy = with_statement(
        migration,
        {
            "Sid": "HostDecrypt",
            "Effect": "Allow",
            "Principal": {"AWS": ADMIN},
            "Action": "kms:*crypt",
        },
    )
    description = refused(migration, policy=policy)
    assert "policy lets a principal decrypt without attestation" in description
    assert f"'HostDecrypt' (#4) lets {ADMIN} call kms:Decrypt" in description


def test_a_target_key_another_image_can_decrypt_is_refused(migration: Migration) -> None:
    policy = policy_for(migration.config, migration.target_pcr0)
    condition = policy["Statement"][0]["Condition"]["StringEqualsIgnoreCase"]
    condition["kms:RecipientAttestation:PCR0"] = [migration.target_pcr0, OTHER_PCR0]
    description = refused(migration, policy=policy)
    assert f"also lets PCR0 {OTHER_PCR0[:16]}… decrypt" in description


def test_a_target_pcr0_other_than_the_policys_is_refused(migration: Migration) -> None:
    # The key is locked to the new image, but the parameter names some other image.
    description = refused(migration, target=OTHER_PCR0)
    assert description.endswith(
        f"policy does not let the target PCR0 {OTHER_PCR0[:16]}… decrypt "
        f"(it admits PCR0 {migration.target_pcr0[:16]}…)"
    )


def test_a_disabled_or_deleted_target_key_is_refused(migration: Migration) -> None:
    key_id = migration.start()
    path = migration.config.state_dir / "kms" / f"{key_id}.json"
    record = json.loads(path.read_text())
    record["state"] = "Disabled"  # the policy lets nobody disable it; AWS-side event
    path.write_text(json.dumps(record))
    result = export(migration.old)
    assert result.status_code == 403
    assert result.json["description"] == f"target key {key_id} is Disabled, not Enabled"
    record["state"] = "Enabled"
    path.write_text(json.dumps(record))
    local_kms(migration.config).schedule_key_deletion(key_id, 7)
    result = export(migration.old)
    assert result.status_code == 403
    assert result.json["description"] == f"target key {key_id} is PendingDeletion, not Enabled"
    assert migration_params(migration) == []


def test_the_key_in_use_or_a_missing_key_is_refused(migration: Migration) -> None:
    migration.start()
    secrets = migration.secrets
    current = migration.old.kms_key_id
    secrets.put("MigrationKMSKeyID", current or "")
    result = export(migration.old)
    assert result.status_code == 403
    assert "is the key in use" in result.json["description"]
    arn = local_kms(migration.config).describe_key(current or "").arn
    secrets.put("MigrationKMSKeyID", arn)  # the same key by its ARN
    assert "is the key in use" in export(migration.old).json["description"]
    secrets.put("MigrationKMSKeyID", "00000000-0000-4000-8000-000000000000")
    result = export(migration.old)
    assert result.status_code == 403
    assert result.json["description"] == (
        "target key 00000000-0000-4000-8000-000000000000 does not exist"
    )
    assert migration_params(migration) == []


def test_export_needs_a_booted_enclave_and_an_empty_body(migration: Migration) -> None:
    fresh = RuntimeState(migration.config)
    result = export(fresh)
    assert result.status_code == 503 and "boot stage config" in result.json["description"]
    migration.start()
    bad = export(migration.old, body='{"key_id": "mine"}')
    assert bad.status_code == 400 and migration_params(migration) == []


def test_only_the_control_app_serves_export_key(migration: Migration) -> None:
    migration.start()
    public = falcon.testing.TestClient(create_public_app(migration.old))
    result = public.simulate_post(EXPORT)
    assert result.status_code == 404
    # The public listener answers the path itself: it is never proxied to the app either.
    assert is_own_path(EXPORT) and is_own_path(EXPORT + "?x=1")
    assert migration_params(migration) == []


# ------------------------------------------------------------------ a successful export


def test_export_re_encrypts_for_the_target_image_only(migration: Migration) -> None:
    key_id = migration.start()
    old, config = migration.old, migration.config
    with captured_logs() as lines:
        result = export(old, body="{}")
    assert result.status_code == 200, result.json
    assert result.json == {
        "exported": [*SECRET_NAMES, "StorageDEK"],
        "pcr0": migration.old_pcr0,
        "new_key_id": key_id,
    }
    secrets = migration.secrets
    app = config.name
    expected = {
        name: (bytes.fromhex(old.static_env[var]), static_secret_context(app, name))
        for name, var in (("signing_key", "APP_SIGNING_KEY"), ("api_key", "APP_API_KEY"))
    }
    assert old.storage_dek is not None
    expected["StorageDEK"] = (old.storage_dek, storage_dek_context(app))
    for name, (plaintext, context) in expected.items():
        stored = secrets.get(f"Migration/{name}/Ciphertext")
        assert stored is not None
        # The new image opens it, under its own context and no other...
        assert recipient_open(config, migration.target_pcr0, key_id, stored, context) == plaintext
        other = storage_dek_context(app) if name != "StorageDEK" else expected["api_key"][1]
        with pytest.raises(CryptoError, match="encryption context does not match"):
            recipient_open(config, migration.target_pcr0, key_id, stored, other)
        # ...and the old image cannot, nor can anyone without attestation.
        with pytest.raises(AccessDenied, match="the request's value differs"):
            recipient_open(config, migration.old_pcr0, key_id, stored, context)
        with pytest.raises(AccessDenied):
            local_kms(config).decrypt(key_id, base64.b64decode(stored), context)
    # The chain link: the old PCR0 and a document binding (old PCR0, new key, target PCR0).
    assert secrets.get("MigrationPreviousPCR0") == migration.old_pcr0
    encoded = secrets.get("MigrationPreviousPCR0Attestation")
    assert encoded is not None
    document = base64.b64decode(encoded)
    root = load_root_pem(config.state_dir / "dev-root.pem")
    verified = verify_document(document, root=root, at=datetime.now(UTC))
    assert verified.pcrs[0].hex() == migration.old_pcr0
    text = f"simple-enclave-migration-v1\n{migration.old_pcr0}\n{key_id}\n{migration.target_pcr0}\n"
    assert verified.user_data == hashlib.sha256(text.encode()).digest()
    assert verified.user_data == migration_binding(
        migration.old_pcr0, key_id, migration.target_pcr0
    )
    assert verified.nonce is not None and len(verified.nonce) == 32 and verified.public_key is None
    # Nothing secret in the log, nor the document.
    assert any("secrets exported to the migration key" in line for line in lines)
    no_secret_in(lines, old)
    assert encoded not in "\n".join(lines)


def test_the_chain_document_cannot_be_replayed_for_another_migration(migration: Migration) -> None:
    key_id = migration.start()
    assert export(migration.old).status_code == 200
    encoded = migration.secrets.get("MigrationPreviousPCR0Attestation")
    assert encoded is not None
    document = base64.b64decode(encoded)
    root = load_root_pem(migration.config.state_dir / "dev-root.pem")
    old, target = migration.old_pcr0, migration.target_pcr0
    verify_chain_link(document, previous_pcr0=old, key_id=key_id, pcr0=target, root=root)
    with pytest.raises(AttestationError, match="user_data does not bind"):
        verify_chain_link(document, previous_pcr0=old, key_id="another-key", pcr0=target, root=root)
    with pytest.raises(AttestationError, match="user_data does not bind"):
        verify_chain_link(document, previous_pcr0=old, key_id=key_id, pcr0=OTHER_PCR0, root=root)


def test_export_twice_rewrites_the_same_parameters(migration: Migration) -> None:
    key_id = migration.start()
    assert export(migration.old).status_code == 200
    first = {n: migration.secrets.get(n) for n in migration_params(migration)}
    second = export(migration.old)
    assert second.status_code == 200
    again = {n: migration.secrets.get(n) for n in migration_params(migration)}
    assert (
        sorted(again)
        == sorted(first)
        == sorted(
            [f"Migration/{n}/Ciphertext" for n in (*SECRET_NAMES, "StorageDEK")]
            + ["MigrationPreviousPCR0", "MigrationPreviousPCR0Attestation"]
        )
    )
    stored = again["Migration/StorageDEK/Ciphertext"]
    assert stored is not None
    dek = recipient_open(
        migration.config,
        migration.target_pcr0,
        key_id,
        stored,
        storage_dek_context(migration.config.name),
    )
    assert dek == migration.old.storage_dek
