"""P1 of docs/threat-model.md: no key protects the secrets unless the enclave verified that only
attested images can ever decrypt under it (policy, grants, origin, Region scope, key store)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from enclave_plugins.aws_kms import AwsKms

from enclave_core.config import Config
from enclave_core.errors import AccessDenied, KeyRefused, ValidationError
from enclave_core.kmspolicy.canonical import EnclaveKeyPolicy, render_policy
from enclave_core.kmspolicy.keycheck import verify_enclave_key
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.runtime.state import RuntimeState
from tests.attacks.host import Host
from tests.enclave_core.runtime.migration_fixtures import (
    STATIC,
    Migration,
    boot,
    make_migration,
    write_image,
)
from tests.helpers import backend_context

SECRET_PARAMS = ("signing_key/Ciphertext", "api_key/Ciphertext", "StorageDEK/Ciphertext")


@pytest.fixture
def static_config(make_config: Callable[..., Config]) -> Config:
    config = make_config(secrets=STATIC)
    write_image(config, "version 1")
    return config


def first_boot_with(config: Config, key_id: str) -> RuntimeState:
    """The host points KMSKeyID at its key, then lets the enclave boot for the first time."""
    Host(config).secrets.put("KMSKeyID", key_id)
    return boot(config, get_plugin_manager())


def refused_at_boot(state: RuntimeState, config: Config, *words: str) -> str:
    """The boot stopped at kms_key, nothing was generated, and the reason says ``words``."""
    assert state.boot_error is not None, "the enclave booted on the host's key"
    assert state.boot_error.startswith("boot stage kms_key failed"), state.boot_error
    for word in words:
        assert word in state.boot_error, state.boot_error
    assert all(Host(config).secrets.get(p) is None for p in SECRET_PARAMS)
    return state.boot_error


def test_a_grant_made_before_the_lock_is_refused_at_boot(static_config: Config) -> None:
    host = Host(static_config)
    pcr0 = write_image(static_config, "version 1")
    key = host.backdoored_key(pcr0)
    # The policy alone looks perfect: exactly what the enclave would have put itself.
    assert host.kms.get_key_policy(key) == host.exact_policy(pcr0)
    state = first_boot_with(static_config, key)
    refused_at_boot(state, static_config, "grant", "Decrypt")


def test_a_grant_made_before_the_enclave_locks_an_open_key_is_refused(
    static_config: Config,
) -> None:
    """The enclave locks an open key itself on first boot; a grant made before still counts."""
    host = Host(static_config)
    key = host.open_key()
    host.kms.create_grant(key, grantee_principal=host.principal, operations=["Decrypt"])
    state = first_boot_with(static_config, key)
    refused_at_boot(state, static_config, "grant")


def test_the_old_enclave_exports_only_to_a_key_it_created(
    make_config: Callable[..., Config],
) -> None:
    migration: Migration = make_migration(make_config)
    host = Host(migration.config)
    target = migration.target_pcr0
    honest_looking = host.kms.create_key(
        policy=host.exact_policy(target), bypass_lockout_safety_check=True
    ).key_id
    for key in (honest_looking, host.backdoored_key(target)):
        migration.start(key_id=key)
        result = migration.export()
        assert result.status_code == 403, result.json
        assert "was not created by this enclave" in result.json["description"]
        assert [n for n in host.secrets.list("Migration/") if n.endswith("Ciphertext")] == []
        assert host.secrets.get("Migration/Manifest") is None


def test_a_key_record_for_another_key_does_not_open_the_export(
    make_config: Callable[..., Config],
) -> None:
    """The record names the key the enclave made; pointing MigrationKMSKeyID elsewhere fails."""
    migration = make_migration(make_config)
    host = Host(migration.config)
    migration.create_key()  # the honest record, for the honest key
    migration.start(key_id=host.backdoored_key(migration.target_pcr0))
    result = migration.export()
    assert result.status_code == 403
    assert "was not created by this enclave" in result.json["description"]


@pytest.mark.parametrize(
    ("create", "words"),
    [
        ({"origin": "EXTERNAL"}, ("origin", "EXTERNAL")),
        ({"custom_key_store_id": "cks-1234567890"}, ("custom key store",)),
        ({"multi_region": True}, ("multi-Region",)),
    ],
)
def test_key_origin_and_scope_are_checked(
    static_config: Config, create: dict[str, Any], words: tuple[str, ...]
) -> None:
    host = Host(static_config)
    pcr0 = write_image(static_config, "version 1")
    key = host.open_key(**create)
    if create.get("origin") == "EXTERNAL":
        # The host imported the key material: it can decrypt anything under it, offline.
        host.kms.import_key_material(key, bytes(range(32)))
    host.kms.put_key_policy(key, host.exact_policy(pcr0), bypass_lockout_safety_check=True)
    refused_at_boot(first_boot_with(static_config, key), static_config, *words)


@pytest.mark.parametrize(
    "deny_resource",
    [None, "arn:aws:kms:us-east-1:000000000000:key/00000000-0000-0000-0000-000000000000"],
)
def test_a_deny_aws_ignores_does_not_hide_a_backdoor(
    static_config: Config, deny_resource: str | None
) -> None:
    host = Host(static_config)
    pcr0 = write_image(static_config, "version 1")
    policy = host.exact_policy(pcr0)
    policy["Statement"].append(
        {
            "Sid": "Backdoor",
            "Effect": "Allow",
            "Principal": {"AWS": host.principal},
            "Action": ["kms:Decrypt", "kms:Encrypt"],
            "Resource": "*",
        }
    )
    deny: dict[str, Any] = {
        "Sid": "LooksLikeItCancelsTheBackdoor",
        "Effect": "Deny",
        "Principal": "*",
        "Action": ["kms:Decrypt", "kms:Encrypt"],
    }
    if deny_resource is not None:
        deny["Resource"] = deny_resource
    policy["Statement"].append(deny)
    key = host.kms.create_key(policy=policy, bypass_lockout_safety_check=True).key_id
    # AWS ignores that Deny (no Resource, or another key's): the backdoor works.
    blob = host.kms.encrypt(key, b"anything", {"app": static_config.name})
    assert host.kms.decrypt(key, blob, {"app": static_config.name}).plaintext == b"anything"
    refused_at_boot(first_boot_with(static_config, key), static_config, "Backdoor")


def test_duplicate_json_keys_are_refused_by_the_local_kms(static_config: Config) -> None:
    host = Host(static_config)
    pcr0 = write_image(static_config, "version 1")
    text = json.dumps(host.exact_policy(pcr0))
    # A second "Effect" in the first statement: read last-wins it would be a Deny.
    text = text.replace('"Effect": "Allow"', '"Effect": "Allow", "Effect": "Deny"', 1)
    with pytest.raises(ValidationError, match="duplicate"):
        host.kms.create_key(policy=text, bypass_lockout_safety_check=True)


def test_the_live_key_is_never_scheduled_for_deletion(static_config: Config) -> None:
    plugins = get_plugin_manager()
    first = boot(static_config, plugins)
    assert first.boot_error is None, first.boot_error
    host = Host(static_config)
    live = host.kms.describe_key(str(first.kms_key_id))
    host.secrets.put("MigrationOldKMSKeyID", live.arn)  # the live key, by another name
    again = boot(static_config, plugins)
    assert again.boot_error is None, again.boot_error
    assert host.kms.describe_key(live.key_id).state == "Enabled"


def test_the_host_cannot_decrypt_under_the_enclaves_key(static_config: Config) -> None:
    """The baseline every attack above tries to get around."""
    state = boot(static_config, get_plugin_manager())
    assert state.boot_error is None, state.boot_error
    host = Host(static_config)
    blob = host.secrets.get("signing_key/Ciphertext")
    assert blob is not None
    with pytest.raises(AccessDenied):
        host.kms.decrypt(
            str(state.kms_key_id),
            base64.b64decode(blob),
            {"app": static_config.name, "purpose": "static-secret", "secret": "signing_key"},
        )


def test_duplicate_json_keys_are_refused_by_the_enclave_on_aws(
    tmp_path: Path, moto_reset: str, boto3_session: Any
) -> None:
    """moto, like a lax reader, stores the policy text as given: the enclave's strict parse of
    GetKeyPolicy must refuse it, whichever duplicate a last-wins reader would have kept."""
    # The enclave's backend, on moto; moto leaves MultiRegion out of DescribeKey (KMS says false).
    session = boto3.session.Session(region_name="us-east-1")

    def moto_omits_multi_region(parsed: dict[str, Any], **_: Any) -> None:
        parsed.get("KeyMetadata", {}).setdefault("MultiRegion", False)

    session.events.register("after-call.kms.DescribeKey", moto_omits_multi_region)
    context = backend_context(tmp_path, session=session)
    options = {"endpoint_url": moto_reset, "sts_endpoint_url": moto_reset}
    kms = AwsKms.from_options(AwsKms.Options().load(options), context)
    principal, pcr0 = kms.caller_arn(), "ab" * 48
    exact = json.dumps(render_policy(EnclaveKeyPolicy(principal=principal, pcr0=pcr0)))
    # A backdoor inside one statement: its first "Action" is kms:*; a last-wins reader sees only
    # the second, the enclave's own list, and would find the policy exact.
    text = exact.replace(
        '"Sid": "EnclaveReadKey", "Effect": "Allow", ',
        '"Sid": "EnclaveReadKey", "Effect": "Allow", "Action": "kms:*", ',
        1,
    )
    assert text != exact
    host = boto3_session.client("kms", endpoint_url=moto_reset)  # the role, straight to KMS
    key = host.create_key(
        Policy=text,
        BypassPolicyLockoutSafetyCheck=True,
        KeySpec="SYMMETRIC_DEFAULT",
        KeyUsage="ENCRYPT_DECRYPT",
    )["KeyMetadata"]
    with pytest.raises(KeyRefused, match="duplicate key 'Action'"):
        verify_enclave_key(
            kms, key["KeyId"], principal=principal, pcr0=pcr0, pcr8=None, app="hello"
        )
