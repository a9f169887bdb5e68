"""The in-memory doubles behave as their real counterparts where callers can tell, and the
counting KMS passes the grants API through."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from enclave_plugins.local_kms import LocalKms

from enclave_core.crypto import cose
from enclave_core.crypto.attestation import verify_document
from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.crypto.cms import open_ciphertext_for_recipient
from enclave_core.errors import AccessDenied, AttestationError, NotFound
from enclave_core.kmspolicy.canonical import locked_policy
from enclave_core.metrics import Metrics
from enclave_core.plugin.interfaces import BackendContext, Kms, Recipient
from enclave_core.runtime.instrumented import CountingKms
from tests.doubles.memory_backends import MemoryKms, MemoryNsm, shared
from tests.helpers import backend_context

CONTEXT = {"app": "hello"}
OTHER = "arn:aws:iam::000000000000:role/other"


def _spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _context(state_dir: Path) -> BackendContext:
    return backend_context(state_dir.parent, state_dir=state_dir)


# ------------------------------------------------------------------ MemoryNsm


def test_memory_nsm_documents_verify_against_the_state_dirs_dev_root(tmp_path: Path) -> None:
    state_dir = tmp_path / ".enclave"
    nsm = MemoryNsm.from_options({}, _context(state_dir))
    assert nsm is shared(MemoryNsm, state_dir)
    nsm.extend_pcr(16, b"measured")
    nsm.lock_pcr(16)
    document = nsm.attestation(user_data=b"user", nonce=b"\x01\x02", public_key=b"key")
    root = load_root_pem(state_dir / "dev-root.pem")
    verified = verify_document(document, root=root, at=datetime.now(UTC))
    assert (verified.user_data, verified.nonce, verified.public_key) == (
        b"user",
        b"\x01\x02",
        b"key",
    )
    assert verified.pcrs[0] == MemoryNsm.PCR0 and verified.pcrs[16] == nsm.pcrs[16]
    assert sorted(verified.pcrs) == [*range(17)]  # 0..15 and every locked PCR above
    assert nsm.documents == [{"user_data": b"user", "nonce": b"\x01\x02", "public_key": b"key"}]
    # The dev CA's private keys stay out of the state directory.
    for path in state_dir.rglob("*"):
        assert path.is_dir() or b"PRIVATE KEY" not in path.read_bytes()
    # Another state directory has another CA: its documents do not verify under this root.
    other = MemoryNsm(tmp_path / "other")
    with pytest.raises(AttestationError):
        verify_document(other.attestation(), root=root, at=datetime.now(UTC))


def test_memory_nsm_without_a_state_dir_still_signs() -> None:
    nsm = MemoryNsm()
    document = nsm.attestation(nonce=b"n")
    assert document[:1] == b"\x84"  # an untagged COSE_Sign1, not a transparent blob
    payload = cose.decode_document(cose.decode_sign1(document).payload)
    assert payload["nonce"] == b"n" and payload["pcrs"][0] == MemoryNsm.PCR0


# ------------------------------------------------------------------ MemoryKms


def test_memory_kms_reads_the_recipient_document(tmp_path: Path, rsa_key: Any) -> None:
    nsm, kms = MemoryNsm(tmp_path / ".enclave"), MemoryKms()
    key = kms.create_key().key_id
    blob = kms.encrypt(key, b"secret", CONTEXT)
    policy = locked_policy(pcr0_hex=MemoryNsm.PCR0.hex(), principal_arn=kms.caller_arn())
    kms.put_key_policy(key, json.dumps(policy), bypass_lockout_safety_check=True)
    assert kms.policies[key] == policy
    recipient = Recipient(nsm.attestation(public_key=_spki(rsa_key)))
    result = kms.decrypt(key, blob, CONTEXT, recipient)
    assert result.plaintext is None and result.ciphertext_for_recipient is not None
    assert open_ciphertext_for_recipient(result.ciphertext_for_recipient, rsa_key) == b"secret"
    nsm.pcrs[0] = b"\x01" * 48  # another image
    with pytest.raises(AccessDenied, match="PCR0"):
        kms.decrypt(key, blob, CONTEXT, Recipient(nsm.attestation(public_key=_spki(rsa_key))))
    with pytest.raises(AccessDenied, match="malformed"):
        kms.decrypt(key, blob, CONTEXT, Recipient(b"DOC:00:00:00:00"))


def test_memory_kms_describes_keys_and_honours_grants() -> None:
    kms = MemoryKms()
    info = kms.create_key(description="k", policy=None, bypass_lockout_safety_check=True)
    assert (info.origin, info.multi_region, info.custom_key_store_id) == ("AWS_KMS", False, None)
    assert (info.key_spec, info.key_usage, info.key_manager) == (
        "SYMMETRIC_DEFAULT",
        "ENCRYPT_DECRYPT",
        "CUSTOMER",
    )
    assert kms.list_grants(info.key_id) == []
    grant_id = kms.create_grant(
        info.key_id, grantee_principal=kms.PRINCIPAL, operations=["Encrypt"]
    )
    [grant] = kms.list_grants(info.key_id)
    assert (grant.grant_id, grant.operations, grant.key_id) == (grant_id, ("Encrypt",), info.arn)
    nobody = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": OTHER}, "Action": "kms:*", "Resource": "*"}
        ],
    }
    kms.put_key_policy(info.key_id, nobody)
    assert kms.encrypt(info.key_id, b"x", CONTEXT)  # through the grant
    with pytest.raises(AccessDenied):
        kms.describe_key(info.key_id)
    with pytest.raises(AccessDenied, match="kms:ListGrants"):
        kms.list_grants(info.key_id)
    kms.retire_grant(info.key_id, grant_id)
    with pytest.raises(AccessDenied):
        kms.encrypt(info.key_id, b"x", CONTEXT)
    with pytest.raises(NotFound):
        kms.retire_grant(info.key_id, grant_id)


# ------------------------------------------------------------------ CountingKms


def test_counting_kms_counts_list_grants_and_passes_optional_methods(tmp_path: Path) -> None:
    metrics = Metrics()
    counting = CountingKms(LocalKms(tmp_path / "kms"), metrics)
    assert isinstance(counting, Kms)
    info = counting.create_key(origin="EXTERNAL")
    assert info.origin == "EXTERNAL"
    grant_id = counting.create_grant(info.key_id, grantee_principal=OTHER, operations=["Decrypt"])
    assert [g.grant_id for g in counting.list_grants(info.key_id)] == [grant_id]
    counting.retire_grant(info.key_id, grant_id)
    assert counting.import_key_material(info.key_id, bytes(32)).state == "Enabled"
    with pytest.raises(NotFound):
        counting.revoke_grant(info.key_id, grant_id)
    assert metrics.snapshot()["kms_operations"] == 6
    assert metrics.snapshot()["kms_errors"] == 1


def test_counting_kms_has_optional_methods_only_when_the_backend_does() -> None:
    counting = CountingKms(MemoryKms(), Metrics())
    assert hasattr(counting, "create_grant") and hasattr(counting, "revoke_grant")
    assert not hasattr(counting, "import_key_material")  # MemoryKms has none
    assert not hasattr(counting, "no_such_method")
    bare = CountingKms(object(), Metrics())  # type: ignore[arg-type]
    for name in ("create_grant", "retire_grant", "revoke_grant", "import_key_material"):
        assert not hasattr(bare, name)
