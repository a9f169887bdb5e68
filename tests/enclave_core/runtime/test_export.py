"""POST /v1/migration-key and POST /v1/export-key: the old enclave makes the key, then exports
to that key only, with a chain link naming every ciphertext.

Real local backends (local KMS, secrets and storage, simulated NSM) in a temporary folder: an old
enclave boots on image v1, the app folder then becomes image v2 (a new PCR0), and the tests play
the supervisor's steps 2 to 5 against the old enclave's control app.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import falcon.testing
import pytest

from enclave_core.config import Config
from enclave_core.crypto.attested_record import read_record, record_user_data
from enclave_core.errors import AccessDenied, CryptoError
from enclave_core.kmspolicy.canonical import match_policy
from enclave_core.runtime.datakeys import static_secret_context, storage_dek_context
from enclave_core.runtime.own_routes import create_public_app, is_own_path
from enclave_core.runtime.state import RuntimeState
from enclave_core.runtime.trust import trust_root
from tests.enclave_core.runtime.migration_fixtures import (
    DATA_KEYS,
    OTHER_PCR0,
    Migration,
    captured_logs,
    control,
    local_kms,
    make_migration,
    no_secret_in,
    recipient_open,
)

EXPORT = "/v1/export-key"
MIGRATION_KEY = "/v1/migration-key"


@pytest.fixture
def migration(make_config: Callable[..., Config]) -> Migration:
    return make_migration(make_config)


def export(state: RuntimeState, body: str | None = None) -> falcon.testing.Result:
    return control(state).simulate_post(EXPORT, body=body)


def ask_key(state: RuntimeState, **body: Any) -> falcon.testing.Result:
    return control(state).simulate_post(MIGRATION_KEY, json=body)


def migration_params(migration: Migration) -> list[str]:
    names = migration.secrets.list()
    return [n for n in names if n.startswith(("Migration/", "MigrationPrev")) and "Key" not in n]


def refused(migration: Migration) -> str:
    """Export, expect 403 with nothing written; return the description."""
    result = export(migration.old)
    assert result.status_code == 403, result.json
    assert result.json["title"] == "Migration refused"
    assert migration_params(migration) == []
    return str(result.json["description"])


# ------------------------------------------------------------------ the migration key


def test_the_old_enclave_makes_the_key_with_its_final_policy(migration: Migration) -> None:
    result = ask_key(migration.old, target_pcr0=migration.target_pcr0, migration_id="m-7")
    assert result.status_code == 200, result.json
    answer = result.json
    assert set(answer) == {
        "key_id",
        "key_arn",
        "target_pcr0",
        "target_pcr8",
        "export_until",
        "migration",
    }
    assert (answer["target_pcr0"], answer["target_pcr8"], answer["migration"]) == (
        migration.target_pcr0,
        None,
        "m-7",
    )
    kms = local_kms(migration.config)
    params = match_policy(kms.get_key_policy(answer["key_id"]))
    assert (params.pcr0, params.principal, params.app) == (
        migration.target_pcr0,
        kms.caller_arn(),
        migration.config.name,
    )
    assert params.export_until is not None
    assert answer["export_until"] == params.export_until.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert kms.list_grants(answer["key_id"]) == []
    # The record that lets the old enclave know the key as its own after a restart.
    root = trust_root(migration.config)
    record = read_record(migration.secrets, "Migration/KeyRecord", "migration-key", root=root)
    assert (
        record is not None
        and record.pcr0 == migration.old_pcr0
        and record.body["key_id"] == answer["key_id"]
    )


def test_asking_again_for_the_same_migration_returns_the_same_key(migration: Migration) -> None:
    kms = local_kms(migration.config)
    before = set(kms.key_ids())
    first = ask_key(migration.old, target_pcr0=migration.target_pcr0, migration_id="m-1").json
    again = ask_key(migration.old, target_pcr0=migration.target_pcr0, migration_id="m-1").json
    assert again == first
    assert set(kms.key_ids()) - before == {first["key_id"]}
    other = ask_key(migration.old, target_pcr0=migration.target_pcr0, migration_id="m-2").json
    assert other["key_id"] != first["key_id"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"target_pcr0": "ab" * 47, "migration_id": "m-1"}, 400, "target_pcr0"),
        ({"target_pcr0": "00" * 48, "migration_id": "m-1"}, 400, "all zero"),
        ({"target_pcr0": "ab" * 48, "migration_id": "Not Valid"}, 400, "migration_id"),
        ({"target_pcr0": "ab" * 48}, 400, "migration_id"),
        ({"target_pcr0": "ab" * 48, "migration_id": "m", "colour": "red"}, 400, "colour"),
    ],
)
def test_bad_migration_key_requests_make_no_key(
    migration: Migration, body: dict[str, Any], status: int, words: str
) -> None:
    before = local_kms(migration.config).key_ids()
    result = ask_key(migration.old, **body)
    assert result.status_code == status, result.json
    assert words in json.dumps(result.json)
    assert local_kms(migration.config).key_ids() == before


def test_a_booting_enclave_makes_no_key(migration: Migration) -> None:
    result = ask_key(RuntimeState(migration.config), target_pcr0="ab" * 48, migration_id="m")
    assert result.status_code == 503 and "boot stage config" in result.json["description"]


# ------------------------------------------------------------------ refusals of the export


def test_without_a_migration_in_progress_it_is_409(migration: Migration) -> None:
    result = export(migration.old)
    assert (result.status_code, result.json) == (
        409,
        {"title": "Conflict", "description": "no migration in progress"},
    )
    migration.secrets.put("MigrationKMSKeyID", "some-key")
    assert export(migration.old).status_code == 409
    assert migration_params(migration) == []


def test_a_key_this_enclave_did_not_make_is_refused(migration: Migration) -> None:
    kms = local_kms(migration.config)
    stranger = kms.create_key(description="a key the host made").key_id
    migration.start(key_id=stranger)
    description = refused(migration)
    assert description.startswith(f"target key {stranger} was not created by this enclave")


def test_a_key_made_for_another_target_is_refused(migration: Migration) -> None:
    key = migration.create_key(target=OTHER_PCR0)
    migration.start(key_id=key.key_id)  # MigrationTargetPCR0 names the real target
    assert "was created for PCR0 0f0f0f0f0f0f0f0f" in refused(migration)


@pytest.mark.parametrize("fate", ["Disabled", "PendingDeletion"])
def test_a_key_that_became_unusable_is_refused(migration: Migration, fate: str) -> None:
    key_id = migration.start()
    kms = local_kms(migration.config)
    # The account root's statement is gone from the policy: only the enclave role may
    # schedule the deletion (and nobody may disable it), which a host holding the role can do.
    if fate == "PendingDeletion":
        kms.schedule_key_deletion(key_id, 7)
    else:
        record = json.loads((kms.directory / f"{key_id}.json").read_text())
        record["state"] = "Disabled"
        (kms.directory / f"{key_id}.json").write_text(json.dumps(record))
    assert f"is {fate}, not Enabled" in refused(migration)


def test_export_needs_a_booted_enclave_and_an_empty_body(migration: Migration) -> None:
    fresh = RuntimeState(migration.config)
    result = export(fresh)
    assert result.status_code == 503 and "boot stage config" in result.json["description"]
    migration.start()
    bad = export(migration.old, body='{"key_id": "mine"}')
    assert bad.status_code == 400 and migration_params(migration) == []


@pytest.mark.parametrize("path", [EXPORT, MIGRATION_KEY])
def test_only_the_control_app_serves_the_migration_paths(migration: Migration, path: str) -> None:
    migration.start()
    public = falcon.testing.TestClient(create_public_app(migration.old))
    result = public.simulate_post(path, json={"target_pcr0": "ab" * 48, "migration_id": "m"})
    assert result.status_code == 404
    # The public listener answers the path itself: it is never proxied to the app either.
    assert is_own_path(path) and is_own_path(path + "?x=1")
    assert migration_params(migration) == []


# ------------------------------------------------------------------ a successful export


def test_export_re_encrypts_for_the_target_image_only(migration: Migration) -> None:
    key_id = migration.start()
    old, config = migration.old, migration.config
    with captured_logs() as lines:
        result = export(old, body="{}")
    assert result.status_code == 200, result.json
    secrets = migration.secrets
    link = read_record(secrets, "Migration/Manifest", "link", root=trust_root(config))
    assert link is not None
    assert result.json == {
        "exported": list(DATA_KEYS),
        "pcr0": migration.old_pcr0,
        "new_key_id": key_id,
        "link": link.digest,
    }
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
        # The link names exactly this ciphertext.
        assert link.body["entries"][name] == hashlib.sha256(base64.b64decode(stored)).hexdigest()
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
    # The chain link: made by the old image, for the target, this key and its policy.
    body = link.body
    assert link.pcr0 == migration.old_pcr0
    assert (body["index"], body["previous_link"]) == (1, None)
    assert (body["from_pcr0"], body["to_pcr0"], body["key_id"]) == (
        migration.old_pcr0,
        migration.target_pcr0,
        key_id,
    )
    assert link.document.user_data == record_user_data("link", body)
    # The readable copies for people.
    assert secrets.get("MigrationPreviousPCR0") == migration.old_pcr0
    assert secrets.get("MigrationPreviousPCR0Attestation") == link.attestation
    # Nothing secret in the log.
    assert any("secrets exported to the migration key" in line for line in lines)
    no_secret_in(lines, old)
    assert link.attestation not in "\n".join(lines)


def test_export_twice_rewrites_the_same_parameters(migration: Migration) -> None:
    key_id = migration.start()
    assert export(migration.old).status_code == 200
    first = sorted(migration_params(migration))
    second = export(migration.old)
    assert second.status_code == 200
    assert sorted(migration_params(migration)) == first
    assert first == sorted(
        [f"Migration/{n}/Ciphertext" for n in DATA_KEYS]
        + ["Migration/Manifest", "MigrationPreviousPCR0", "MigrationPreviousPCR0Attestation"]
    )
    stored = migration.secrets.get("Migration/StorageDEK/Ciphertext")
    assert stored is not None
    link = json.loads(migration.secrets.get("Migration/Manifest") or "")
    digest = hashlib.sha256(base64.b64decode(stored)).hexdigest()
    assert link["body"]["entries"]["StorageDEK"] == digest  # the link follows the latest export
    dek = recipient_open(
        migration.config,
        migration.target_pcr0,
        key_id,
        stored,
        storage_dek_context(migration.config.name),
    )
    assert dek == migration.old.storage_dek
