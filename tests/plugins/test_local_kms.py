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
from enclave_core.interfaces import BackendContext, Kms
from enclave_core.kms_policy import default_policy, locked_policy
from enclave_core.manager import get_plugin_manager

CONTEXT = {"app": "hello", "purpose": "storage-dek"}


@pytest.fixture
def kms(tmp_path: Path) -> LocalKms:
    return LocalKms(tmp_path / "kms", region="eu-west-1")


def _material(kms: LocalKms, key_id: str) -> bytes:
    """Open a key's material the way the format documents it (master.key, key id as AAD)."""
    record = json.loads((kms.directory / f"{key_id}.json").read_text())
    sealed = base64.b64decode(record["material"])
    master = AESGCM((kms.directory / "master.key").read_bytes())
    return master.decrypt(sealed[:12], sealed[12:], MATERIAL_AAD + key_id.encode())


def test_create_key_metadata_and_files(kms: LocalKms) -> None:
    info = kms.create_key(description="hello enclave key")
    assert str(uuid.UUID(info.key_id, version=4)) == info.key_id
    assert info.arn == f"arn:aws:kms:eu-west-1:000000000000:key/{info.key_id}"
    assert (info.state, info.description, info.deletion_date) == (
        "Enabled",
        "hello enclave key",
        None,
    )
    assert kms.describe_key(info.key_id) == info
    assert kms.describe_key(info.arn) == info
    assert kms.key_ids() == [info.key_id]
    for name in ("master.key", f"{info.key_id}.json"):
        assert stat.S_IMODE((kms.directory / name).stat().st_mode) == 0o600
    assert len((kms.directory / "master.key").read_bytes()) == 32
    assert isinstance(kms, Kms)


def test_key_material_is_not_stored_raw(kms: LocalKms) -> None:
    info = kms.create_key()
    material = _material(kms, info.key_id)
    assert len(material) == 32
    stored = (kms.directory / f"{info.key_id}.json").read_bytes()
    for form in (material, material.hex().encode(), base64.b64encode(material)):
        assert form not in stored
    # ...and that material really is the key: it opens the blobs KMS makes.
    blob = kms.encrypt(info.key_id, b"secret", CONTEXT)
    header_len = 2 + blob[1]
    aad = blob[:header_len] + json.dumps(CONTEXT, sort_keys=True, separators=(",", ":")).encode()
    opened = AESGCM(material).decrypt(
        blob[header_len : header_len + 12], blob[header_len + 12 :], aad
    )
    assert opened == b"secret"


def test_key_material_cannot_move_between_key_files(kms: LocalKms) -> None:
    a, b = kms.create_key(), kms.create_key()
    record_a = json.loads((kms.directory / f"{a.key_id}.json").read_text())
    record_b = json.loads((kms.directory / f"{b.key_id}.json").read_text())
    record_b["material"] = record_a["material"]
    (kms.directory / f"{b.key_id}.json").write_text(json.dumps(record_b))
    with pytest.raises(BackendError, match="does not open with master.key"):
        kms.encrypt(b.key_id, b"x", CONTEXT)


def test_encrypt_decrypt_roundtrip_and_persistence(kms: LocalKms) -> None:
    info = kms.create_key()
    blob = kms.encrypt(info.key_id, b"thirty-two bytes of secret data!", CONTEXT)
    assert b"thirty-two" not in blob
    result = kms.decrypt(info.key_id, blob, dict(reversed(list(CONTEXT.items()))))
    assert result.plaintext == b"thirty-two bytes of secret data!"
    assert result.key_id == info.arn
    # a fresh backend on the same directory (a restart) decrypts too, key found from the blob
    assert LocalKms(kms.directory).decrypt("", blob, CONTEXT).plaintext == result.plaintext
    assert kms.decrypt(info.arn, blob, CONTEXT).plaintext == result.plaintext


@pytest.mark.parametrize(
    "other_context",
    [{}, {"app": "hello"}, {"app": "hello", "purpose": "static-secret"}, {**CONTEXT, "x": "y"}],
)
def test_decrypt_with_another_context_fails(kms: LocalKms, other_context: dict[str, str]) -> None:
    info = kms.create_key()
    blob = kms.encrypt(info.key_id, b"data", CONTEXT)
    with pytest.raises(CryptoError, match="encryption context does not match"):
        kms.decrypt(info.key_id, blob, other_context)


def test_tampered_ciphertext_fails(kms: LocalKms) -> None:
    info = kms.create_key()
    blob = bytearray(kms.encrypt(info.key_id, b"data", CONTEXT))
    for index in (len(blob) - 1, len(blob) - 20, 2 + blob[1] + 1):  # tag, ciphertext, nonce
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(CryptoError, match="altered"):
            kms.decrypt(info.key_id, bytes(tampered), CONTEXT)
    for broken in (b"", b"\x02" + bytes(blob[1:]), bytes(blob[:30])):
        with pytest.raises(CryptoError, match="malformed"):
            kms.decrypt(info.key_id, broken, CONTEXT)


def test_decrypt_refuses_a_blob_of_another_key(kms: LocalKms) -> None:
    a, b = kms.create_key(), kms.create_key()
    blob = kms.encrypt(a.key_id, b"data", CONTEXT)
    with pytest.raises(CryptoError, match=f"under key {a.key_id}"):
        kms.decrypt(b.key_id, blob, CONTEXT)


def test_generate_data_key(kms: LocalKms) -> None:
    info = kms.create_key()
    result = kms.generate_data_key(info.key_id, CONTEXT, number_of_bytes=48)
    assert result.plaintext is not None and len(result.plaintext) == 48
    assert result.ciphertext_blob is not None
    assert kms.decrypt(info.key_id, result.ciphertext_blob, CONTEXT).plaintext == result.plaintext
    assert kms.generate_data_key(info.key_id, CONTEXT).plaintext != result.plaintext
    for bad in (0, 1025):
        with pytest.raises(ValidationError):
            kms.generate_data_key(info.key_id, CONTEXT, number_of_bytes=bad)


def test_input_validation(kms: LocalKms) -> None:
    info = kms.create_key()
    with pytest.raises(ValidationError):
        kms.encrypt(info.key_id, b"", CONTEXT)
    with pytest.raises(ValidationError):
        kms.encrypt(info.key_id, bytes(4097), CONTEXT)
    with pytest.raises(ValidationError, match="encryption context"):
        kms.encrypt(info.key_id, b"x", {"n": 1})


def test_unknown_keys_are_not_found(kms: LocalKms) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        kms.describe_key(str(uuid.uuid4()))
    for bogus in ("../../etc/passwd", "alias/x", "arn:aws:kms:us-east-1:1:key/../x"):
        with pytest.raises(NotFound):
            kms.describe_key(bogus)


def test_disabled_key_is_unusable_until_enabled(kms: LocalKms) -> None:
    info = kms.create_key()
    blob = kms.encrypt(info.key_id, b"data", CONTEXT)
    assert kms.disable_key(info.key_id).state == "Disabled"
    for call in (
        lambda: kms.encrypt(info.key_id, b"x", CONTEXT),
        lambda: kms.decrypt(info.key_id, blob, CONTEXT),
        lambda: kms.generate_data_key(info.key_id, CONTEXT),
    ):
        with pytest.raises(InvalidKeyState, match=f"{info.key_id} is Disabled"):
            call()
    assert kms.enable_key(info.key_id).state == "Enabled"
    assert kms.decrypt(info.key_id, blob, CONTEXT).plaintext == b"data"


def test_schedule_key_deletion(kms: LocalKms) -> None:
    info = kms.create_key()
    for days in (6, 31, 0):
        with pytest.raises(ValidationError, match="7..30"):
            kms.schedule_key_deletion(info.key_id, days)
    assert kms.describe_key(info.key_id).state == "Enabled"
    before = datetime.now(UTC)
    pending = kms.schedule_key_deletion(info.key_id, 7)
    assert pending.state == "PendingDeletion"
    assert pending.deletion_date is not None
    when = datetime.fromisoformat(pending.deletion_date)
    assert before + timedelta(days=7, seconds=-2) <= when <= before + timedelta(days=7, minutes=1)
    with pytest.raises(InvalidKeyState, match=f"{info.key_id} is PendingDeletion"):
        kms.schedule_key_deletion(info.key_id, 7)
    with pytest.raises(InvalidKeyState, match="PendingDeletion"):
        kms.encrypt(info.key_id, b"x", CONTEXT)
    restored = kms.cancel_key_deletion(info.key_id)
    assert (restored.state, restored.deletion_date) == ("Disabled", None)


def test_key_past_its_deletion_date_is_gone(kms: LocalKms) -> None:
    info = kms.create_key()
    kms.schedule_key_deletion(info.key_id, 30)
    path = kms.directory / f"{info.key_id}.json"
    record = json.loads(path.read_text())
    record["deletion_date"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(
        timespec="seconds"
    )
    path.write_text(json.dumps(record))
    with pytest.raises(NotFound, match="was deleted"):
        kms.describe_key(info.key_id)
    assert kms.key_ids() == []


def test_default_and_replaced_key_policy(kms: LocalKms) -> None:
    info = kms.create_key()
    policy = kms.get_key_policy(info.key_id)
    assert policy["Version"] == "2012-10-17"
    [statement] = policy["Statement"]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::000000000000:root"}
    assert (statement["Effect"], statement["Action"]) == ("Allow", "kms:*")
    locked = locked_policy(pcr0_hex="ab" * 48, principal_arn=kms.caller_arn())
    kms.put_key_policy(info.key_id, locked, bypass_lockout_safety_check=True)
    assert kms.get_key_policy(info.key_id) == locked
    assert LocalKms(kms.directory).get_key_policy(info.arn) == locked


def test_create_key_with_policy_and_invalid_policies(kms: LocalKms) -> None:
    custom = {**default_policy("000000000000"), "Id": "custom"}
    info = kms.create_key(policy=custom)
    assert kms.get_key_policy(info.key_id) == custom
    bad: dict[str, Any]
    for bad in (
        {},
        {"Version": "2012-10-17"},
        {"Version": "1", "Statement": {}},
        {"Statement": []},
    ):
        with pytest.raises(ValidationError):
            kms.put_key_policy(info.key_id, bad)
    assert kms.get_key_policy(info.key_id) == custom
    with pytest.raises(ValidationError):
        kms.create_key(policy={"Statement": "nope"})
    assert kms.key_ids() == [info.key_id]
    # A key whose policy allows nothing: refused by the lockout safety check, as AWS does...
    nothing: dict[str, Any] = {"Version": "2012-10-17", "Statement": []}
    with pytest.raises(ValidationError, match="MalformedPolicyDocumentException: CreateKey"):
        kms.create_key(policy=nothing)
    assert kms.key_ids() == [info.key_id]  # and no key was made
    # ... unless bypassed: it exists, but nobody can use or even describe it.
    sealed = kms.create_key(policy=nothing, bypass_lockout_safety_check=True)
    with pytest.raises(AccessDenied, match=f"kms:DescribeKey on key {sealed.key_id} denied"):
        kms.describe_key(sealed.key_id)


def test_logs_never_carry_key_material_or_plaintext(kms: LocalKms) -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG", serialize=True)
    try:
        info = kms.create_key()
        result = kms.generate_data_key(info.key_id, CONTEXT)
        kms.schedule_key_deletion(info.key_id, 7)
    finally:
        logger.remove(sink)
    text = "\n".join(lines)
    assert info.key_id in text  # the key is named...
    material = _material(kms, info.key_id)
    assert result.plaintext is not None
    for secret in (material, result.plaintext):  # ...its secrets are not
        for form in (secret.hex(), base64.b64encode(secret).decode()):
            assert form not in text


def _context(tmp_path: Path) -> BackendContext:
    return BackendContext(
        name="hello",
        prefix="dev",
        region="ap-south-1",
        mode="development",
        base_dir=tmp_path,
        state_dir=tmp_path / ".enclave",
        app_dir=tmp_path,
    )


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


def test_put_key_policy_lockout_safety_check(kms: LocalKms) -> None:
    info = kms.create_key()
    locked = locked_policy(pcr0_hex="ab" * 48, principal_arn=kms.caller_arn())
    with pytest.raises(ValidationError, match="MalformedPolicyDocumentException") as raised:
        kms.put_key_policy(info.key_id, locked)
    assert "will not allow you to update the key policy in the future" in str(raised.value)
    assert kms.get_key_policy(info.key_id) == default_policy("000000000000")  # unchanged
    # A new policy that still lets the caller put policies passes without the bypass.
    keeps_admin = {**default_policy("000000000000"), "Id": "v2"}
    kms.put_key_policy(info.key_id, keeps_admin)
    assert kms.get_key_policy(info.key_id)["Id"] == "v2"
    kms.put_key_policy(info.key_id, locked, bypass_lockout_safety_check=True)
    # Locked: nobody, the account root included, can change it again, with or without bypass.
    for bypass in (False, True):
        with pytest.raises(AccessDenied, match="kms:PutKeyPolicy on key .* denied"):
            kms.put_key_policy(info.key_id, keeps_admin, bypass_lockout_safety_check=bypass)
    assert kms.get_key_policy(info.key_id) == locked


def test_create_key_with_a_locking_policy_is_locked_from_its_first_moment(kms: LocalKms) -> None:
    locked = locked_policy(pcr0_hex="ab" * 48, principal_arn=kms.caller_arn())
    # The lockout safety check applies to CreateKey as to PutKeyPolicy; a refusal makes no key.
    with pytest.raises(ValidationError, match="MalformedPolicyDocumentException") as raised:
        kms.create_key(description="locked", policy=locked)
    assert "will not allow you to update the key policy in the future" in str(raised.value)
    assert kms.key_ids() == []
    info = kms.create_key(description="locked", policy=locked, bypass_lockout_safety_check=True)
    assert kms.key_ids() == [info.key_id]
    # The stored record holds the given policy, never the default one, and it is enforced.
    record = json.loads((kms.directory / f"{info.key_id}.json").read_text())
    assert record["policy"] == locked
    assert LocalKms(kms.directory).get_key_policy(info.key_id) == locked
    assert kms.describe_key(info.key_id).description == "locked"
    with pytest.raises(AccessDenied, match=f"kms:Encrypt on key {info.key_id} denied"):
        kms.encrypt(info.key_id, b"forged", CONTEXT)
    with pytest.raises(AccessDenied, match="the request has no attestation document"):
        kms.generate_data_key(info.key_id, CONTEXT)
    for bypass in (False, True):
        with pytest.raises(AccessDenied, match=f"kms:PutKeyPolicy on key {info.key_id} denied"):
            kms.put_key_policy(
                info.key_id, default_policy("000000000000"), bypass_lockout_safety_check=bypass
            )
    assert kms.get_key_policy(info.key_id) == locked
    # Without a policy the bypass flag changes nothing: the default policy.
    plain = kms.create_key(bypass_lockout_safety_check=True)
    assert kms.get_key_policy(plain.key_id) == default_policy("000000000000")


def test_a_locked_key_refuses_what_its_policy_does_not_grant(kms: LocalKms) -> None:
    info = kms.create_key()
    blob = kms.encrypt(info.key_id, b"made before the lock", CONTEXT)
    locked = locked_policy(pcr0_hex="ab" * 48, principal_arn=kms.caller_arn())
    kms.put_key_policy(info.key_id, locked, bypass_lockout_safety_check=True)
    assert kms.describe_key(info.key_id).state == "Enabled"  # DescribeKey stays allowed
    denied = {
        "kms:Encrypt": lambda: kms.encrypt(info.key_id, b"forged", CONTEXT),
        "kms:DisableKey": lambda: kms.disable_key(info.key_id),
        "kms:EnableKey": lambda: kms.enable_key(info.key_id),
        "kms:CancelKeyDeletion": lambda: kms.cancel_key_deletion(info.key_id),
    }
    for action, call in denied.items():
        with pytest.raises(AccessDenied, match=f"{action} on key {info.key_id} denied"):
            call()
    # Recipient-less Decrypt and GenerateDataKey: the attestation condition is not met.
    for call in (
        lambda: kms.decrypt(info.key_id, blob, CONTEXT),
        lambda: kms.generate_data_key(info.key_id, CONTEXT),
    ):
        with pytest.raises(AccessDenied) as raised:
            call()
        message = str(raised.value)
        assert info.key_id in message and "kms:RecipientAttestation:PCR0" in message
        assert "the request has no attestation document" in message
        assert "made before the lock" not in message
    assert kms.schedule_key_deletion(info.key_id, 7).state == "PendingDeletion"  # allowed


def test_another_principal_is_denied(kms: LocalKms) -> None:
    info = kms.create_key()
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
    kms.put_key_policy(info.key_id, role_only, bypass_lockout_safety_check=True)
    with pytest.raises(
        AccessDenied,
        match="no statement allows kms:DescribeKey for arn:aws:iam::000000000000:role/enclave",
    ):
        kms.describe_key(info.key_id)
    other = LocalKms(kms.directory, principal="arn:aws:iam::000000000000:role/other")
    assert other.describe_key(info.key_id).key_id == info.key_id


def test_encryption_context_conditions_are_enforced(kms: LocalKms) -> None:
    policy = default_policy("000000000000")
    policy["Statement"][0]["Condition"] = {"StringEquals": {"kms:EncryptionContext:app": "hello"}}
    # PutKeyPolicy carries no encryption context, so this policy locks the caller out.
    with pytest.raises(ValidationError, match="will not allow you to update the key policy"):
        kms.create_key(policy=policy)
    info = kms.create_key(policy=policy, bypass_lockout_safety_check=True)
    blob = kms.encrypt(info.key_id, b"data", CONTEXT)
    assert kms.decrypt(info.key_id, blob, CONTEXT).plaintext == b"data"
    with pytest.raises(AccessDenied, match="kms:EncryptionContext:app"):
        kms.encrypt(info.key_id, b"data", {"app": "other"})
