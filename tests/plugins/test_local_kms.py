"""Tests for the ``local`` KMS backend: real AES-GCM, real files, key states and policies."""

from __future__ import annotations

import base64
import json
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import marshmallow
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from enclave_plugins.local_kms import MATERIAL_AAD, LocalKms
from loguru import logger

from enclave_core.errors import (
    AccessDenied,
    BackendError,
    CryptoError,
    InvalidKeyState,
    NotFound,
    ValidationError,
)
from enclave_core.kmspolicy.canonical import locked_policy
from enclave_core.kmspolicy.evaluation import default_policy
from enclave_core.plugin.interfaces import BackendContext, Kms
from enclave_core.plugin.manager import get_plugin_manager
from tests.helpers import backend_context

CONTEXT = {"app": "hello", "purpose": "storage-dek"}


@pytest.fixture
def regional_kms(tmp_path: Path) -> LocalKms:
    return LocalKms(tmp_path / "kms", region="eu-west-1")


def _material(kms: LocalKms, key_id: str) -> bytes:
    """Open a key's material the way the format documents it (master.key, key id as AAD)."""
    record = json.loads((kms.directory / f"{key_id}.json").read_text())
    sealed = base64.b64decode(record["material"])
    master = AESGCM((kms.directory / "master.key").read_bytes())
    return master.decrypt(sealed[:12], sealed[12:], MATERIAL_AAD + key_id.encode())


def test_create_key_metadata_and_files(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key(description="hello enclave key")
    assert str(uuid.UUID(info.key_id, version=4)) == info.key_id
    assert info.arn == f"arn:aws:kms:eu-west-1:000000000000:key/{info.key_id}"
    assert (info.state, info.description, info.deletion_date) == (
        "Enabled",
        "hello enclave key",
        None,
    )
    assert regional_kms.describe_key(info.key_id) == info
    assert regional_kms.describe_key(info.arn) == info
    assert regional_kms.key_ids() == [info.key_id]
    for name in ("master.key", f"{info.key_id}.json"):
        assert stat.S_IMODE((regional_kms.directory / name).stat().st_mode) == 0o600
    assert len((regional_kms.directory / "master.key").read_bytes()) == 32
    assert isinstance(regional_kms, Kms)


def test_key_material_is_not_stored_raw(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    material = _material(regional_kms, info.key_id)
    assert len(material) == 32
    stored = (regional_kms.directory / f"{info.key_id}.json").read_bytes()
    for form in (material, material.hex().encode(), base64.b64encode(material)):
        assert form not in stored
    # ...and that material really is the key: it opens the blobs KMS makes.
    blob = regional_kms.encrypt(info.key_id, b"secret", CONTEXT)
    header_len = 2 + blob[1]
    aad = blob[:header_len] + json.dumps(CONTEXT, sort_keys=True, separators=(",", ":")).encode()
    opened = AESGCM(material).decrypt(
        blob[header_len : header_len + 12], blob[header_len + 12 :], aad
    )
    assert opened == b"secret"


def test_key_material_cannot_move_between_key_files(regional_kms: LocalKms) -> None:
    a, b = regional_kms.create_key(), regional_kms.create_key()
    record_a = json.loads((regional_kms.directory / f"{a.key_id}.json").read_text())
    record_b = json.loads((regional_kms.directory / f"{b.key_id}.json").read_text())
    record_b["material"] = record_a["material"]
    (regional_kms.directory / f"{b.key_id}.json").write_text(json.dumps(record_b))
    with pytest.raises(BackendError, match="does not open with master.key"):
        regional_kms.encrypt(b.key_id, b"x", CONTEXT)


def test_encrypt_decrypt_roundtrip_and_persistence(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    blob = regional_kms.encrypt(info.key_id, b"thirty-two bytes of secret data!", CONTEXT)
    assert b"thirty-two" not in blob
    result = regional_kms.decrypt(info.key_id, blob, dict(reversed(list(CONTEXT.items()))))
    assert result.plaintext == b"thirty-two bytes of secret data!"
    assert result.key_id == info.arn
    # a fresh backend on the same directory (a restart) decrypts too, key found from the blob
    assert LocalKms(regional_kms.directory).decrypt("", blob, CONTEXT).plaintext == result.plaintext
    assert regional_kms.decrypt(info.arn, blob, CONTEXT).plaintext == result.plaintext


@pytest.mark.parametrize(
    "other_context",
    [{}, {"app": "hello"}, {"app": "hello", "purpose": "static-secret"}, {**CONTEXT, "x": "y"}],
)
def test_decrypt_with_another_context_fails(
    regional_kms: LocalKms, other_context: dict[str, str]
) -> None:
    info = regional_kms.create_key()
    blob = regional_kms.encrypt(info.key_id, b"data", CONTEXT)
    with pytest.raises(CryptoError, match="encryption context does not match"):
        regional_kms.decrypt(info.key_id, blob, other_context)


def test_tampered_ciphertext_fails(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    blob = bytearray(regional_kms.encrypt(info.key_id, b"data", CONTEXT))
    for index in (len(blob) - 1, len(blob) - 20, 2 + blob[1] + 1):  # tag, ciphertext, nonce
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(CryptoError, match="altered"):
            regional_kms.decrypt(info.key_id, bytes(tampered), CONTEXT)
    for broken in (b"", b"\x02" + bytes(blob[1:]), bytes(blob[:30])):
        with pytest.raises(CryptoError, match="malformed"):
            regional_kms.decrypt(info.key_id, broken, CONTEXT)


def test_decrypt_refuses_a_blob_of_another_key(regional_kms: LocalKms) -> None:
    a, b = regional_kms.create_key(), regional_kms.create_key()
    blob = regional_kms.encrypt(a.key_id, b"data", CONTEXT)
    with pytest.raises(CryptoError, match=f"under key {a.key_id}"):
        regional_kms.decrypt(b.key_id, blob, CONTEXT)


def test_generate_data_key(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    result = regional_kms.generate_data_key(info.key_id, CONTEXT, number_of_bytes=48)
    assert result.plaintext is not None and len(result.plaintext) == 48
    assert result.ciphertext_blob is not None
    assert (
        regional_kms.decrypt(info.key_id, result.ciphertext_blob, CONTEXT).plaintext
        == result.plaintext
    )
    assert regional_kms.generate_data_key(info.key_id, CONTEXT).plaintext != result.plaintext
    for bad in (0, 1025):
        with pytest.raises(ValidationError):
            regional_kms.generate_data_key(info.key_id, CONTEXT, number_of_bytes=bad)


def test_input_validation(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    with pytest.raises(ValidationError):
        regional_kms.encrypt(info.key_id, b"", CONTEXT)
    with pytest.raises(ValidationError):
        regional_kms.encrypt(info.key_id, bytes(4097), CONTEXT)
    with pytest.raises(ValidationError, match="encryption context"):
        regional_kms.encrypt(info.key_id, b"x", {"n": 1})


def test_unknown_keys_are_not_found(regional_kms: LocalKms) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        regional_kms.describe_key(str(uuid.uuid4()))
    for bogus in ("../../etc/passwd", "alias/x", "arn:aws:kms:us-east-1:1:key/../x"):
        with pytest.raises(NotFound):
            regional_kms.describe_key(bogus)


def test_disabled_key_is_unusable_until_enabled(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    blob = regional_kms.encrypt(info.key_id, b"data", CONTEXT)
    assert regional_kms.disable_key(info.key_id).state == "Disabled"
    for call in (
        lambda: regional_kms.encrypt(info.key_id, b"x", CONTEXT),
        lambda: regional_kms.decrypt(info.key_id, blob, CONTEXT),
        lambda: regional_kms.generate_data_key(info.key_id, CONTEXT),
    ):
        with pytest.raises(InvalidKeyState, match=f"{info.key_id} is Disabled"):
            call()
    assert regional_kms.enable_key(info.key_id).state == "Enabled"
    assert regional_kms.decrypt(info.key_id, blob, CONTEXT).plaintext == b"data"


def test_schedule_key_deletion(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    for days in (6, 31, 0):
        with pytest.raises(ValidationError, match="7..30"):
            regional_kms.schedule_key_deletion(info.key_id, days)
    assert regional_kms.describe_key(info.key_id).state == "Enabled"
    before = datetime.now(UTC)
    pending = regional_kms.schedule_key_deletion(info.key_id, 7)
    assert pending.state == "PendingDeletion"
    assert pending.deletion_date is not None
    when = datetime.fromisoformat(pending.deletion_date)
    assert before + timedelta(days=7, seconds=-2) <= when <= before + timedelta(days=7, minutes=1)
    with pytest.raises(InvalidKeyState, match=f"{info.key_id} is PendingDeletion"):
        regional_kms.schedule_key_deletion(info.key_id, 7)
    with pytest.raises(InvalidKeyState, match="PendingDeletion"):
        regional_kms.encrypt(info.key_id, b"x", CONTEXT)
    restored = regional_kms.cancel_key_deletion(info.key_id)
    assert (restored.state, restored.deletion_date) == ("Disabled", None)


def test_key_past_its_deletion_date_is_gone(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    regional_kms.schedule_key_deletion(info.key_id, 30)
    path = regional_kms.directory / f"{info.key_id}.json"
    record = json.loads(path.read_text())
    record["deletion_date"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(
        timespec="seconds"
    )
    path.write_text(json.dumps(record))
    with pytest.raises(NotFound, match="was deleted"):
        regional_kms.describe_key(info.key_id)
    assert regional_kms.key_ids() == []


def test_default_and_replaced_key_policy(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    policy = regional_kms.get_key_policy(info.key_id)
    assert policy["Version"] == "2012-10-17"
    [statement] = policy["Statement"]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::000000000000:root"}
    assert (statement["Effect"], statement["Action"]) == ("Allow", "kms:*")
    locked = locked_policy(pcr0_hex="ab" * 48, principal_arn=regional_kms.caller_arn())
    regional_kms.put_key_policy(info.key_id, locked, bypass_lockout_safety_check=True)
    assert regional_kms.get_key_policy(info.key_id) == locked
    assert LocalKms(regional_kms.directory).get_key_policy(info.arn) == locked


def test_create_key_with_policy_and_invalid_policies(regional_kms: LocalKms) -> None:
    custom = {**default_policy("000000000000"), "Id": "custom"}
    info = regional_kms.create_key(policy=custom)
    assert regional_kms.get_key_policy(info.key_id) == custom
    bad: dict[str, Any]
    for bad in (
        {},
        {"Version": "2012-10-17"},
        {"Version": "1", "Statement": {}},
        {"Statement": []},
    ):
        with pytest.raises(ValidationError):
            regional_kms.put_key_policy(info.key_id, bad)
    assert regional_kms.get_key_policy(info.key_id) == custom
    with pytest.raises(ValidationError):
        regional_kms.create_key(policy={"Statement": "nope"})
    assert regional_kms.key_ids() == [info.key_id]
    # A key whose policy allows nothing: refused by the lockout safety check, as AWS does...
    nothing: dict[str, Any] = {"Version": "2012-10-17", "Statement": []}
    with pytest.raises(ValidationError, match="MalformedPolicyDocumentException: CreateKey"):
        regional_kms.create_key(policy=nothing)
    assert regional_kms.key_ids() == [info.key_id]  # and no key was made
    # ... unless bypassed: it exists, but nobody can use or even describe it.
    sealed = regional_kms.create_key(policy=nothing, bypass_lockout_safety_check=True)
    with pytest.raises(AccessDenied, match=f"kms:DescribeKey on key {sealed.key_id} denied"):
        regional_kms.describe_key(sealed.key_id)


def test_logs_never_carry_key_material_or_plaintext(regional_kms: LocalKms) -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG", serialize=True)
    try:
        info = regional_kms.create_key()
        result = regional_kms.generate_data_key(info.key_id, CONTEXT)
        regional_kms.schedule_key_deletion(info.key_id, 7)
    finally:
        logger.remove(sink)
    text = "\n".join(lines)
    assert info.key_id in text  # the key is named...
    material = _material(regional_kms, info.key_id)
    assert result.plaintext is not None
    for secret in (material, result.plaintext):  # ...its secrets are not
        for form in (secret.hex(), base64.b64encode(secret).decode()):
            assert form not in text


def _context(tmp_path: Path) -> BackendContext:
    return backend_context(tmp_path, region="ap-south-1")


def test_from_options(tmp_path: Path) -> None:
    options = LocalKms.Options().load({})
    assert options == {
        "path": ".enclave/kms",
        "principal": "arn:aws:iam::000000000000:role/enclave",
        "root_pem": None,
    }
    backend = LocalKms.from_options(options, _context(tmp_path))
    info = backend.create_key()
    assert info.arn.startswith("arn:aws:kms:ap-south-1:000000000000:key/")
    assert (tmp_path / ".enclave" / "kms" / f"{info.key_id}.json").is_file()
    assert backend.caller_arn() == "arn:aws:iam::000000000000:role/enclave"
    assert backend.root_pem == tmp_path / ".enclave" / "dev-root.pem"  # the simulated NSM's
    assert isinstance(backend, Kms)


def test_options_principal_and_root(tmp_path: Path) -> None:
    role = "arn:aws:iam::123456789012:role/app"
    options = LocalKms.Options().load({"principal": role, "root_pem": "certs/root.pem"})
    backend = LocalKms.from_options(options, _context(tmp_path))
    assert backend.caller_arn() == role
    assert backend.root_pem == tmp_path / "certs" / "root.pem"
    for bad in ("role/app", "arn:aws:iam::12:role/app", ""):
        with pytest.raises(marshmallow.ValidationError):
            LocalKms.Options().load({"principal": bad})
    with pytest.raises(marshmallow.ValidationError):
        LocalKms.Options().load({"bogus": 1})


def test_hook_enclave_register_kms() -> None:
    plugins = get_plugin_manager()
    assert plugins.kms.get("local") is LocalKms
    assert plugins.kms.owner("local") == "local-kms"


# ------------------------------------------------------------------ key policies enforced


def test_put_key_policy_lockout_safety_check(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    locked = locked_policy(pcr0_hex="ab" * 48, principal_arn=regional_kms.caller_arn())
    with pytest.raises(ValidationError, match="MalformedPolicyDocumentException") as raised:
        regional_kms.put_key_policy(info.key_id, locked)
    assert "will not allow you to update the key policy in the future" in str(raised.value)
    assert regional_kms.get_key_policy(info.key_id) == default_policy("000000000000")  # unchanged
    # A new policy that still lets the caller put policies passes without the bypass.
    keeps_admin = {**default_policy("000000000000"), "Id": "v2"}
    regional_kms.put_key_policy(info.key_id, keeps_admin)
    assert regional_kms.get_key_policy(info.key_id)["Id"] == "v2"
    regional_kms.put_key_policy(info.key_id, locked, bypass_lockout_safety_check=True)
    # Locked: nobody, the account root included, can change it again, with or without bypass.
    for bypass in (False, True):
        with pytest.raises(AccessDenied, match="kms:PutKeyPolicy on key .* denied"):
            regional_kms.put_key_policy(
                info.key_id, keeps_admin, bypass_lockout_safety_check=bypass
            )
    assert regional_kms.get_key_policy(info.key_id) == locked


def test_create_key_with_a_locking_policy_is_locked_from_its_first_moment(
    regional_kms: LocalKms,
) -> None:
    locked = locked_policy(pcr0_hex="ab" * 48, principal_arn=regional_kms.caller_arn())
    # The lockout safety check applies to CreateKey as to PutKeyPolicy; a refusal makes no key.
    with pytest.raises(ValidationError, match="MalformedPolicyDocumentException") as raised:
        regional_kms.create_key(description="locked", policy=locked)
    assert "will not allow you to update the key policy in the future" in str(raised.value)
    assert regional_kms.key_ids() == []
    info = regional_kms.create_key(
        description="locked", policy=locked, bypass_lockout_safety_check=True
    )
    assert regional_kms.key_ids() == [info.key_id]
    # The stored record holds the given policy, never the default one, and it is enforced.
    record = json.loads((regional_kms.directory / f"{info.key_id}.json").read_text())
    assert record["policy"] == locked
    assert LocalKms(regional_kms.directory).get_key_policy(info.key_id) == locked
    assert regional_kms.describe_key(info.key_id).description == "locked"
    with pytest.raises(AccessDenied, match=f"kms:Encrypt on key {info.key_id} denied"):
        regional_kms.encrypt(info.key_id, b"forged", CONTEXT)
    with pytest.raises(AccessDenied, match="the request has no attestation document"):
        regional_kms.generate_data_key(info.key_id, CONTEXT)
    for bypass in (False, True):
        with pytest.raises(AccessDenied, match=f"kms:PutKeyPolicy on key {info.key_id} denied"):
            regional_kms.put_key_policy(
                info.key_id, default_policy("000000000000"), bypass_lockout_safety_check=bypass
            )
    assert regional_kms.get_key_policy(info.key_id) == locked
    # Without a policy the bypass flag changes nothing: the default policy.
    plain = regional_kms.create_key(bypass_lockout_safety_check=True)
    assert regional_kms.get_key_policy(plain.key_id) == default_policy("000000000000")


def test_a_locked_key_refuses_what_its_policy_does_not_grant(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    blob = regional_kms.encrypt(info.key_id, b"made before the lock", CONTEXT)
    locked = locked_policy(pcr0_hex="ab" * 48, principal_arn=regional_kms.caller_arn())
    regional_kms.put_key_policy(info.key_id, locked, bypass_lockout_safety_check=True)
    assert regional_kms.describe_key(info.key_id).state == "Enabled"  # DescribeKey stays allowed
    denied = {
        "kms:Encrypt": lambda: regional_kms.encrypt(info.key_id, b"forged", CONTEXT),
        "kms:DisableKey": lambda: regional_kms.disable_key(info.key_id),
        "kms:EnableKey": lambda: regional_kms.enable_key(info.key_id),
        "kms:CancelKeyDeletion": lambda: regional_kms.cancel_key_deletion(info.key_id),
    }
    for action, call in denied.items():
        with pytest.raises(AccessDenied, match=f"{action} on key {info.key_id} denied"):
            call()
    # Recipient-less Decrypt and GenerateDataKey: the attestation condition is not met.
    for call in (
        lambda: regional_kms.decrypt(info.key_id, blob, CONTEXT),
        lambda: regional_kms.generate_data_key(info.key_id, CONTEXT),
    ):
        with pytest.raises(AccessDenied) as raised:
            call()
        message = str(raised.value)
        assert info.key_id in message and "kms:RecipientAttestation:PCR0" in message
        assert "the request has no attestation document" in message
        assert "made before the lock" not in message
    assert regional_kms.schedule_key_deletion(info.key_id, 7).state == "PendingDeletion"  # allowed


def test_another_principal_is_denied(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    role_only = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::000000000000:role/other"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }
    regional_kms.put_key_policy(info.key_id, role_only, bypass_lockout_safety_check=True)
    with pytest.raises(
        AccessDenied,
        match="no statement allows kms:DescribeKey for arn:aws:iam::000000000000:role/enclave",
    ):
        regional_kms.describe_key(info.key_id)
    other = LocalKms(regional_kms.directory, principal="arn:aws:iam::000000000000:role/other")
    assert other.describe_key(info.key_id).key_id == info.key_id


def test_encryption_context_conditions_are_enforced(regional_kms: LocalKms) -> None:
    policy = default_policy("000000000000")
    policy["Statement"][0]["Condition"] = {"StringEquals": {"kms:EncryptionContext:app": "hello"}}
    # PutKeyPolicy carries no encryption context, so this policy locks the caller out.
    with pytest.raises(ValidationError, match="will not allow you to update the key policy"):
        regional_kms.create_key(policy=policy)
    info = regional_kms.create_key(policy=policy, bypass_lockout_safety_check=True)
    blob = regional_kms.encrypt(info.key_id, b"data", CONTEXT)
    assert regional_kms.decrypt(info.key_id, blob, CONTEXT).plaintext == b"data"
    with pytest.raises(AccessDenied, match="kms:EncryptionContext:app"):
        regional_kms.encrypt(info.key_id, b"data", {"app": "other"})


# ------------------------------------------------------------------ key kinds

STORE = "cks-1234567890abcdef0"
ATTACKER = "arn:aws:iam::000000000000:role/attacker"
ENCLAVE_ONLY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "EnclaveOnly",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::000000000000:role/enclave"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ],
}


def test_describe_reports_what_kind_of_key_it_is(regional_kms: LocalKms) -> None:
    info = regional_kms.describe_key(regional_kms.create_key().key_id)
    assert (info.origin, info.multi_region, info.custom_key_store_id) == ("AWS_KMS", False, None)
    assert (info.key_spec, info.key_usage, info.key_manager) == (
        "SYMMETRIC_DEFAULT",
        "ENCRYPT_DECRYPT",
        "CUSTOMER",
    )


def test_an_external_key_waits_for_its_material_then_uses_exactly_it(
    regional_kms: LocalKms,
) -> None:
    info = regional_kms.create_key(description="imported", origin="EXTERNAL")
    assert (info.state, info.origin) == ("PendingImport", "EXTERNAL")
    assert regional_kms.describe_key(info.key_id) == info
    record = json.loads((regional_kms.directory / f"{info.key_id}.json").read_text())
    assert record["material"] is None
    with pytest.raises(InvalidKeyState, match=f"{info.key_id} is PendingImport"):
        regional_kms.encrypt(info.key_id, b"x", CONTEXT)
    with pytest.raises(InvalidKeyState):
        regional_kms.enable_key(info.key_id)
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValidationError, match="32 bytes"):
            regional_kms.import_key_material(info.key_id, bad)
    material = bytes(range(32))  # the owner knows it: that is the point of EXTERNAL
    imported = regional_kms.import_key_material(info.key_id, material)
    assert (imported.state, imported.origin) == ("Enabled", "EXTERNAL")
    assert regional_kms.describe_key(info.key_id).state == "Enabled"
    assert _material(regional_kms, info.key_id) == material
    blob = regional_kms.encrypt(info.key_id, b"secret", CONTEXT)
    assert regional_kms.decrypt(info.key_id, blob, CONTEXT).plaintext == b"secret"
    # Whoever imported the material opens every blob without KMS, policy or not.
    header = 2 + blob[1]
    aad = blob[:header] + json.dumps(CONTEXT, sort_keys=True, separators=(",", ":")).encode()
    assert AESGCM(material).decrypt(blob[header : header + 12], blob[header + 12 :], aad) == (
        b"secret"
    )
    # Re-importing: the same material is accepted, other material never.
    assert regional_kms.import_key_material(info.key_id, material).state == "Enabled"
    with pytest.raises(CryptoError, match="IncorrectKeyMaterialException"):
        regional_kms.import_key_material(info.key_id, bytes(32))
    with pytest.raises(ValidationError, match="UnsupportedOperationException"):
        regional_kms.import_key_material(regional_kms.create_key().key_id, material)
    # A deletion scheduled before the import returns the key to PendingImport when cancelled.
    pending = regional_kms.create_key(origin="EXTERNAL")
    assert regional_kms.schedule_key_deletion(pending.key_id, 7).state == "PendingDeletion"
    assert regional_kms.cancel_key_deletion(pending.key_id).state == "PendingImport"


def test_import_key_material_needs_its_permission(regional_kms: LocalKms) -> None:
    policy = json.loads(json.dumps(ENCLAVE_ONLY))
    policy["Statement"].append(
        {**policy["Statement"][0], "Sid": "NoImport", "Effect": "Deny", "Action": "kms:Import*"}
    )
    info = regional_kms.create_key(origin="EXTERNAL", policy=policy)
    with pytest.raises(AccessDenied, match=f"kms:ImportKeyMaterial on key {info.key_id} denied"):
        regional_kms.import_key_material(info.key_id, bytes(32))
    assert regional_kms.describe_key(info.key_id).state == "PendingImport"


def test_custom_key_store_and_multi_region_keys(regional_kms: LocalKms) -> None:
    stored = regional_kms.create_key(custom_key_store_id=STORE)
    assert (stored.origin, stored.custom_key_store_id, stored.multi_region) == (
        "AWS_CLOUDHSM",
        STORE,
        False,
    )
    assert regional_kms.describe_key(stored.key_id) == stored
    xks = regional_kms.create_key(custom_key_store_id=STORE, origin="EXTERNAL_KEY_STORE")
    assert regional_kms.describe_key(xks.key_id).origin == "EXTERNAL_KEY_STORE"
    multi = regional_kms.create_key(multi_region=True)
    assert multi.multi_region is True and multi.origin == "AWS_KMS"
    assert multi.key_id.startswith("mrk-") and len(multi.key_id) == 36
    assert regional_kms.describe_key(multi.arn) == multi
    blob = regional_kms.encrypt(multi.key_id, b"x", CONTEXT)
    assert LocalKms(regional_kms.directory).decrypt("", blob, CONTEXT).plaintext == b"x"
    for bad in (
        {"custom_key_store_id": STORE, "multi_region": True},
        {"custom_key_store_id": STORE, "origin": "EXTERNAL"},
        {"origin": "AWS_CLOUDHSM"},
        {"origin": "SOMEWHERE"},
    ):
        with pytest.raises(ValidationError):
            regional_kms.create_key(**bad)


def test_records_written_before_key_kinds_and_grants_read_as_plain_keys(
    regional_kms: LocalKms,
) -> None:
    info = regional_kms.create_key()
    path = regional_kms.directory / f"{info.key_id}.json"
    record = json.loads(path.read_text())
    for field in ("origin", "multi_region", "custom_key_store_id", "grants"):
        del record[field]
    path.write_text(json.dumps(record))
    described = regional_kms.describe_key(info.key_id)
    assert (described.origin, described.multi_region, described.custom_key_store_id) == (
        "AWS_KMS",
        False,
        None,
    )
    assert regional_kms.list_grants(info.key_id) == []
    regional_kms.create_grant(info.key_id, grantee_principal=ATTACKER, operations=["Decrypt"])
    assert len(regional_kms.list_grants(info.key_id)) == 1


# ------------------------------------------------------------------ grants


def test_a_grant_survives_a_policy_change_and_is_honoured(regional_kms: LocalKms) -> None:
    attacker = LocalKms(regional_kms.directory, principal=ATTACKER)
    info = regional_kms.create_key()  # default policy: the whole account, attacker included
    blob = regional_kms.encrypt(info.key_id, b"the secret", CONTEXT)
    grant_id = regional_kms.create_grant(
        info.key_id, grantee_principal=ATTACKER, operations=["Decrypt"], name="backdoor"
    )
    assert len(grant_id) == 64
    regional_kms.put_key_policy(info.key_id, ENCLAVE_ONLY)  # the attacker is no longer named
    with pytest.raises(AccessDenied, match=f"no statement allows kms:DescribeKey for {ATTACKER}"):
        attacker.describe_key(info.key_id)
    with pytest.raises(AccessDenied, match="kms:Encrypt"):
        attacker.encrypt(info.key_id, b"x", CONTEXT)
    # ...yet the grant made while the policy was open still decrypts.
    assert attacker.decrypt(info.key_id, blob, CONTEXT).plaintext == b"the secret"
    [grant] = regional_kms.list_grants(info.key_id)
    assert (grant.grant_id, grant.key_id, grant.grantee_principal, grant.operations) == (
        grant_id,
        info.arn,
        ATTACKER,
        ("Decrypt",),
    )
    assert (grant.name, grant.retiring_principal, grant.encryption_context_subset) == (
        "backdoor",
        None,
        None,
    )
    with pytest.raises(AccessDenied, match="kms:ListGrants"):
        attacker.list_grants(info.key_id)
    # An identical named grant is the same grant.
    again = regional_kms.create_grant(
        info.key_id, grantee_principal=ATTACKER, operations=["Decrypt"], name="backdoor"
    )
    assert again == grant_id and len(regional_kms.list_grants(info.key_id)) == 1
    # An explicit Deny beats the grant.
    denying = json.loads(json.dumps(ENCLAVE_ONLY))
    denying["Statement"].append(
        {
            "Sid": "NoAttacker",
            "Effect": "Deny",
            "Principal": {"AWS": ATTACKER},
            "Action": "kms:Decrypt",
            "Resource": "*",
        }
    )
    regional_kms.put_key_policy(info.key_id, denying)
    with pytest.raises(AccessDenied, match="explicitly denied by statement 'NoAttacker'"):
        attacker.decrypt(info.key_id, blob, CONTEXT)
    regional_kms.put_key_policy(info.key_id, ENCLAVE_ONLY)
    assert attacker.decrypt("", blob, CONTEXT).plaintext == b"the secret"
    # Retiring removes it: the grantee cannot (no RetireGrant in it), the key's admin can.
    with pytest.raises(AccessDenied, match="kms:RetireGrant"):
        attacker.retire_grant(info.key_id, grant_id)
    regional_kms.retire_grant(info.key_id, grant_id)
    assert regional_kms.list_grants(info.key_id) == []
    with pytest.raises(AccessDenied, match="kms:Decrypt"):
        attacker.decrypt(info.key_id, blob, CONTEXT)
    with pytest.raises(NotFound, match="has no grant"):
        regional_kms.retire_grant(info.key_id, grant_id)


def test_grants_give_only_their_operations_within_their_constraint(regional_kms: LocalKms) -> None:
    attacker = LocalKms(regional_kms.directory, principal=ATTACKER)
    info = regional_kms.create_key(policy=ENCLAVE_ONLY)
    regional_kms.create_grant(
        info.key_id,
        grantee_principal=ATTACKER,
        operations=["Encrypt", "Decrypt", "GenerateDataKey"],
        constraints={"EncryptionContextSubset": {"app": "hello"}},
    )
    regional_kms.create_grant(info.key_id, grantee_principal=ATTACKER, operations=["DescribeKey"])
    assert attacker.describe_key(info.key_id).key_id == info.key_id
    blob = attacker.encrypt(info.key_id, b"forged", CONTEXT)  # app=hello: in the constraint
    assert attacker.decrypt(info.key_id, blob, CONTEXT).plaintext == b"forged"
    data_key = attacker.generate_data_key(info.key_id, {"app": "hello"})
    assert data_key.plaintext is not None and len(data_key.plaintext) == 32
    with pytest.raises(AccessDenied, match="kms:Encrypt"):
        attacker.encrypt(info.key_id, b"x", {"app": "other"})
    for action, call in {
        "kms:GetKeyPolicy": lambda: attacker.get_key_policy(info.key_id),
        "kms:PutKeyPolicy": lambda: attacker.put_key_policy(info.key_id, ENCLAVE_ONLY),
        "kms:DisableKey": lambda: attacker.disable_key(info.key_id),
        "kms:CreateGrant": lambda: attacker.create_grant(
            info.key_id, grantee_principal=ATTACKER, operations=["Decrypt"]
        ),
    }.items():
        with pytest.raises(AccessDenied, match=action):
            call()
    # A fresh backend on the directory honours the stored grants too.
    assert LocalKms(regional_kms.directory, principal=ATTACKER).decrypt("", blob, CONTEXT).plaintext


def test_a_grant_of_create_grant_passes_on_no_more_than_it_holds(regional_kms: LocalKms) -> None:
    attacker = LocalKms(regional_kms.directory, principal=ATTACKER)
    helper = "arn:aws:iam::000000000000:role/helper"
    info = regional_kms.create_key(policy=ENCLAVE_ONLY)
    blob = regional_kms.encrypt(info.key_id, b"secret", CONTEXT)
    regional_kms.create_grant(
        info.key_id, grantee_principal=ATTACKER, operations=["Decrypt", "CreateGrant"]
    )
    attacker.create_grant(info.key_id, grantee_principal=helper, operations=["Decrypt"])
    assert LocalKms(regional_kms.directory, principal=helper).decrypt(
        "", blob, CONTEXT
    ).plaintext == (b"secret")
    with pytest.raises(AccessDenied, match="kms:CreateGrant"):
        attacker.create_grant(info.key_id, grantee_principal=helper, operations=["Encrypt"])
    assert len(regional_kms.list_grants(info.key_id)) == 2


def test_retiring_and_revoking_grants(regional_kms: LocalKms) -> None:
    attacker = LocalKms(regional_kms.directory, principal=ATTACKER)
    retirer = "arn:aws:iam::000000000000:role/retirer"
    info = regional_kms.create_key(policy=ENCLAVE_ONLY)
    by_retirer = regional_kms.create_grant(
        info.key_id, grantee_principal=ATTACKER, operations=["Decrypt"], retiring_principal=retirer
    )
    self_retiring = regional_kms.create_grant(
        info.key_id, grantee_principal=ATTACKER, operations=["Decrypt", "RetireGrant"]
    )
    revocable = regional_kms.create_grant(
        info.key_id, grantee_principal=ATTACKER, operations=["Encrypt"]
    )
    LocalKms(regional_kms.directory, principal=retirer).retire_grant(info.arn, by_retirer)
    attacker.retire_grant(info.key_id, self_retiring)
    with pytest.raises(AccessDenied, match="kms:RevokeGrant"):
        attacker.revoke_grant(info.key_id, revocable)
    regional_kms.revoke_grant(info.key_id, revocable)
    assert regional_kms.list_grants(info.key_id) == []
    with pytest.raises(NotFound):
        regional_kms.revoke_grant(info.key_id, revocable)


def test_create_grant_refuses_what_kms_refuses(regional_kms: LocalKms) -> None:
    info = regional_kms.create_key()
    bad: dict[str, Any]
    for bad in (
        {"operations": []},
        {"operations": "Decrypt"},
        {"operations": ["PutKeyPolicy"]},
        {"operations": ["decrypt"]},
        {"operations": ["DescribeKey"], "constraints": {"EncryptionContextSubset": {"a": "b"}}},
        {"operations": ["Decrypt"], "constraints": {"EncryptionContextLike": {"a": "b"}}},
        {"operations": ["Decrypt"], "constraints": {"EncryptionContextSubset": {"a": 1}}},
        {"operations": ["Decrypt"], "grantee_principal": "attacker"},
        {"operations": ["Decrypt"], "retiring_principal": "*"},
        {"operations": ["Decrypt"], "name": "not a name!"},
    ):
        with pytest.raises(ValidationError):
            regional_kms.create_grant(info.key_id, **{"grantee_principal": ATTACKER, **bad})
    assert regional_kms.list_grants(info.key_id) == []
    regional_kms.schedule_key_deletion(info.key_id, 7)
    with pytest.raises(InvalidKeyState, match="PendingDeletion"):
        regional_kms.create_grant(info.key_id, grantee_principal=ATTACKER, operations=["Decrypt"])


# ------------------------------------------------------------------ policy text, Resource, time


def test_policy_text_with_a_duplicate_key_is_a_malformed_policy_document(
    regional_kms: LocalKms,
) -> None:
    info = regional_kms.create_key()
    text = json.dumps(ENCLAVE_ONLY)
    duplicated = text.replace('"Effect": "Allow"', '"Effect": "Deny", "Effect": "Allow"')
    assert duplicated != text
    with pytest.raises(ValidationError) as raised:
        regional_kms.put_key_policy(info.key_id, duplicated)
    assert str(raised.value).startswith("MalformedPolicyDocumentException:")
    assert "duplicate key 'Effect' in one object" in str(raised.value)
    assert regional_kms.get_key_policy(info.key_id) == default_policy("000000000000")
    with pytest.raises(ValidationError, match="^MalformedPolicyDocumentException: CreateKey"):
        regional_kms.create_key(policy=duplicated)
    assert regional_kms.key_ids() == [info.key_id]
    with pytest.raises(ValidationError, match="^MalformedPolicyDocumentException:"):
        regional_kms.put_key_policy(info.key_id, {"Version": "2012-10-17"})
    # Clean text is taken, and stored as the document it encodes.
    regional_kms.put_key_policy(info.key_id, text)
    assert regional_kms.get_key_policy(info.key_id) == ENCLAVE_ONLY
    created = regional_kms.create_key(policy=text)
    record = json.loads((regional_kms.directory / f"{created.key_id}.json").read_text())
    assert record["policy"] == ENCLAVE_ONLY


def _one_statement(kms: LocalKms, statement: dict[str, Any], *extra: dict[str, Any]) -> str:
    info = kms.create_key()
    policy = {"Version": "2012-10-17", "Statement": [statement, *extra]}
    kms.put_key_policy(info.key_id, policy, bypass_lockout_safety_check=True)
    return info.key_id


def test_the_resource_element_is_enforced(regional_kms: LocalKms) -> None:
    everything = ENCLAVE_ONLY["Statement"][0]
    no_resource = {k: v for k, v in everything.items() if k != "Resource"}
    key = _one_statement(regional_kms, no_resource)
    with pytest.raises(AccessDenied, match="has no Resource element"):
        regional_kms.describe_key(key)  # an Allow without Resource allows nothing
    other_arn = f"arn:aws:kms:eu-west-1:000000000000:key/{uuid.uuid4()}"
    key = _one_statement(regional_kms, {**everything, "Resource": other_arn})
    with pytest.raises(AccessDenied, match="does not name this key"):
        regional_kms.describe_key(key)
    info = regional_kms.create_key()
    regional_kms.put_key_policy(
        info.key_id, {**ENCLAVE_ONLY, "Statement": [{**everything, "Resource": info.arn}]}
    )
    assert regional_kms.describe_key(info.key_id).key_id == info.key_id  # this key's ARN applies
    deny = {**everything, "Effect": "Deny", "Action": "kms:Encrypt"}
    key = _one_statement(
        regional_kms, everything, {k: v for k, v in deny.items() if k != "Resource"}
    )
    regional_kms.encrypt(key, b"x", CONTEXT)  # a Deny without Resource denies nothing
    key = _one_statement(regional_kms, everything, {**deny, "Resource": other_arn})
    regional_kms.encrypt(key, b"x", CONTEXT)  # nor does a Deny naming another key
    info = regional_kms.create_key()
    policy = {**ENCLAVE_ONLY, "Statement": [everything, {**deny, "Resource": info.arn}]}
    regional_kms.put_key_policy(info.key_id, policy)
    with pytest.raises(AccessDenied, match="explicitly denied"):
        regional_kms.encrypt(info.key_id, b"x", CONTEXT)


@pytest.mark.parametrize(("days", "allowed"), [(-1, False), (1, True)])
def test_an_encrypt_allowed_until_a_deadline(
    regional_kms: LocalKms, days: int, allowed: bool
) -> None:
    deadline = (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    until = {
        **ENCLAVE_ONLY["Statement"][0],
        "Sid": "Until",
        "Action": "kms:Encrypt",
        "Condition": {"DateLessThan": {"aws:CurrentTime": deadline}},
    }
    key = _one_statement(regional_kms, until)
    if allowed:
        assert regional_kms.encrypt(key, b"x", CONTEXT)
    else:
        with pytest.raises(AccessDenied, match="DateLessThan aws:CurrentTime"):
            regional_kms.encrypt(key, b"x", CONTEXT)
