"""The Kms contract: what :class:`~enclave_core.plugin.interfaces.Kms` promises.

Keys, policies (enforced, with the lockout check), encryption contexts, data keys, grants,
scheduled deletion and ``caller_arn``; optional methods are checked when present. The Recipient
flow is left to each backend's own tests (docs/architecture.md, "The backend contract suite").
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, ClassVar

import pytest

from enclave_core.errors import (
    AccessDenied,
    CryptoError,
    InvalidKeyState,
    NotFound,
    ValidationError,
)
from enclave_core.plugin.interfaces import GrantInfo, KeyInfo, Kms
from enclave_core.testing.contract_base import BackendContract, has_parameter

CONTEXT = {"app": "hello", "purpose": "contract"}
PLAINTEXT = b"a secret the contract encrypts 0123456789"
_IAM_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):\S+$")


def account_of(arn: str) -> str:
    """The account id in an IAM ARN."""
    match = _IAM_ARN.match(arn)
    assert match, f"caller_arn() must be an IAM ARN, not {arn!r}"
    return match.group(1)


def admin_policy(caller: str, sid: str = "CallerAdministers") -> dict[str, Any]:
    """A key policy letting ``caller`` do everything (so it passes the lockout safety check)."""
    return {
        "Version": "2012-10-17",
        "Id": "contract-admin",
        "Statement": [
            {
                "Sid": sid,
                "Effect": "Allow",
                "Principal": {"AWS": caller},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }


def limited_policy(caller: str, actions: list[str]) -> dict[str, Any]:
    """A key policy letting ``caller`` do only ``actions`` (no kms:PutKeyPolicy: a lockout)."""
    return {
        "Version": "2012-10-17",
        "Id": "contract-limited",
        "Statement": [
            {
                "Sid": "CallerMayOnly",
                "Effect": "Allow",
                "Principal": {"AWS": caller},
                "Action": actions,
                "Resource": "*",
            }
        ],
    }


def _same_key(info: KeyInfo, key_id: str) -> bool:
    return key_id in (info.key_id, info.arn)


class KmsContract(BackendContract):
    """Subclass as ``TestMyKms(KmsContract)`` and say which backend (``backend_class`` or a
    ``backend`` fixture) to check it against the Kms contract."""

    protocol: ClassVar[type[Any]] = Kms

    @pytest.fixture
    def key(self, backend: Kms) -> KeyInfo:
        """A fresh key with the backend's default policy."""
        return backend.create_key(description="contract key")

    @pytest.fixture
    def caller(self, backend: Kms) -> str:
        """The IAM principal the backend calls as."""
        return backend.caller_arn()

    @staticmethod
    def _needs_create_key_policy(backend: Kms) -> None:
        if not has_parameter(backend.create_key, "policy"):
            pytest.skip("create_key() takes no policy (optional; callers create, then put)")

    @staticmethod
    def _needs(backend: Kms, *methods: str) -> None:
        missing = [m for m in methods if not callable(getattr(backend, m, None))]
        if missing:
            pytest.skip(f"{type(backend).__name__} has no {', '.join(missing)} (optional)")

    # ------------------------------------------------------------------ keys

    def test_create_key_makes_an_enabled_key_describe_reports(self, backend: Kms) -> None:
        info = backend.create_key(description="the contract's first key")
        assert info.key_id and info.arn and info.key_id in info.arn
        assert (info.state, info.description) == ("Enabled", "the contract's first key")
        assert info.deletion_date is None
        described = backend.describe_key(info.key_id)
        assert (described.key_id, described.arn, described.state, described.description) == (
            info.key_id,
            info.arn,
            "Enabled",
            "the contract's first key",
        )

    def test_key_info_says_a_symmetric_customer_key(self, key: KeyInfo, backend: Kms) -> None:
        for info in (key, backend.describe_key(key.key_id)):
            assert info.key_spec in (None, "SYMMETRIC_DEFAULT")
            assert info.key_usage in (None, "ENCRYPT_DECRYPT")
            assert info.origin in (None, "AWS_KMS")
            assert info.key_manager in (None, "CUSTOMER")
            assert info.multi_region in (None, False)
            assert info.custom_key_store_id is None

    def test_each_key_is_a_new_key(self, backend: Kms) -> None:
        first = backend.create_key(description="one")
        second = backend.create_key(description="two")
        assert first.key_id != second.key_id and first.arn != second.arn
        assert backend.describe_key(second.key_id).description == "two"
        blob = backend.encrypt(first.key_id, PLAINTEXT, CONTEXT)
        assert _same_key(first, backend.decrypt(first.key_id, blob, CONTEXT).key_id)

    def test_describe_of_an_unknown_key_raises_not_found(self, backend: Kms) -> None:
        with pytest.raises(NotFound):
            backend.describe_key(str(uuid.uuid4()))

    def test_operations_on_an_unknown_key_raise_not_found(self, backend: Kms) -> None:
        unknown = str(uuid.uuid4())
        with pytest.raises(NotFound):
            backend.encrypt(unknown, PLAINTEXT, CONTEXT)
        with pytest.raises(NotFound):
            backend.generate_data_key(unknown, CONTEXT)
        with pytest.raises(NotFound):
            backend.get_key_policy(unknown)

    # ------------------------------------------------------------------ key policies

    def test_a_new_key_has_a_policy_document(self, key: KeyInfo, backend: Kms) -> None:
        policy = backend.get_key_policy(key.key_id)
        assert isinstance(policy, dict) and isinstance(policy.get("Version"), str)
        assert isinstance(policy.get("Statement"), list) and policy["Statement"]

    def test_put_key_policy_replaces_the_policy(
        self, key: KeyInfo, backend: Kms, caller: str
    ) -> None:
        policy = admin_policy(caller)
        backend.put_key_policy(key.key_id, policy)
        assert backend.get_key_policy(key.key_id) == policy

    def test_put_key_policy_takes_json_text(self, key: KeyInfo, backend: Kms, caller: str) -> None:
        policy = admin_policy(caller, sid="FromText")
        backend.put_key_policy(key.key_id, json.dumps(policy, indent=2))
        assert backend.get_key_policy(key.key_id) == policy

    def test_put_key_policy_refuses_text_that_is_not_a_policy(
        self, key: KeyInfo, backend: Kms
    ) -> None:
        before = backend.get_key_policy(key.key_id)
        with pytest.raises(ValidationError):
            backend.put_key_policy(key.key_id, "{not json")
        assert backend.get_key_policy(key.key_id) == before

    def test_put_key_policy_refuses_a_lockout_without_the_bypass(
        self, key: KeyInfo, backend: Kms, caller: str
    ) -> None:
        before = backend.get_key_policy(key.key_id)
        locked = limited_policy(caller, ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:Encrypt"])
        with pytest.raises(ValidationError):
            backend.put_key_policy(key.key_id, locked)
        assert backend.get_key_policy(key.key_id) == before

    def test_put_key_policy_with_the_bypass_locks_the_key(
        self, key: KeyInfo, backend: Kms, caller: str
    ) -> None:
        locked = limited_policy(caller, ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:Encrypt"])
        backend.put_key_policy(key.key_id, locked, bypass_lockout_safety_check=True)
        assert backend.get_key_policy(key.key_id) == locked
        backend.encrypt(key.key_id, PLAINTEXT, CONTEXT)  # still allowed
        with pytest.raises(AccessDenied):
            backend.put_key_policy(key.key_id, admin_policy(caller))
        assert backend.get_key_policy(key.key_id) == locked

    def test_a_key_policy_is_enforced(self, key: KeyInfo, backend: Kms, caller: str) -> None:
        blob = backend.encrypt(key.key_id, PLAINTEXT, CONTEXT)
        no_decrypt = limited_policy(
            caller, ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:Encrypt", "kms:PutKeyPolicy"]
        )
        backend.put_key_policy(key.key_id, no_decrypt)
        with pytest.raises(AccessDenied):
            backend.decrypt(key.key_id, blob, CONTEXT)
        backend.put_key_policy(key.key_id, admin_policy(caller))
        assert backend.decrypt(key.key_id, blob, CONTEXT).plaintext == PLAINTEXT

    def test_create_key_with_a_policy_has_it_from_the_start(
        self, backend: Kms, caller: str
    ) -> None:
        self._needs_create_key_policy(backend)
        policy = admin_policy(caller, sid="FromCreation")
        info = backend.create_key(description="with a policy", policy=policy)
        assert info.state == "Enabled"
        assert backend.get_key_policy(info.key_id) == policy
        text = admin_policy(caller, sid="FromCreationAsText")
        from_text = backend.create_key(description="policy text", policy=json.dumps(text))
        assert backend.get_key_policy(from_text.key_id) == text

    def test_create_key_refuses_a_lockout_policy_without_the_bypass(
        self, backend: Kms, caller: str
    ) -> None:
        self._needs_create_key_policy(backend)
        locked = limited_policy(caller, ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:Encrypt"])
        with pytest.raises(ValidationError):
            backend.create_key(description="refused", policy=locked)

    def test_create_key_with_a_lockout_policy_and_the_bypass_is_locked_from_the_start(
        self, backend: Kms, caller: str
    ) -> None:
        self._needs_create_key_policy(backend)
        locked = limited_policy(caller, ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:Encrypt"])
        info = backend.create_key(
            description="locked", policy=locked, bypass_lockout_safety_check=True
        )
        assert backend.get_key_policy(info.key_id) == locked
        blob = backend.encrypt(info.key_id, PLAINTEXT, CONTEXT)
        with pytest.raises(AccessDenied):
            backend.decrypt(info.key_id, blob, CONTEXT)
        with pytest.raises(AccessDenied):
            backend.put_key_policy(info.key_id, admin_policy(caller))

    # ------------------------------------------------------------------ encrypt / decrypt

    def test_encrypt_then_decrypt_with_the_same_context(self, key: KeyInfo, backend: Kms) -> None:
        blob = backend.encrypt(key.key_id, PLAINTEXT, CONTEXT)
        assert isinstance(blob, bytes) and PLAINTEXT not in blob
        result = backend.decrypt(key.key_id, blob, dict(CONTEXT))
        assert result.plaintext == PLAINTEXT
        assert result.ciphertext_for_recipient is None
        assert _same_key(key, result.key_id), result.key_id

    def test_plaintexts_of_one_to_4096_bytes(self, key: KeyInfo, backend: Kms) -> None:
        for plaintext in (b"\x00", bytes(range(256)) * 16):
            blob = backend.encrypt(key.key_id, plaintext, CONTEXT)
            assert backend.decrypt(key.key_id, blob, CONTEXT).plaintext == plaintext

    def test_an_empty_context_round_trips(self, key: KeyInfo, backend: Kms) -> None:
        blob = backend.encrypt(key.key_id, PLAINTEXT, {})
        assert backend.decrypt(key.key_id, blob, {}).plaintext == PLAINTEXT
        with pytest.raises(CryptoError):
            backend.decrypt(key.key_id, blob, CONTEXT)

    @pytest.mark.parametrize(
        "wrong",
        [
            {"app": "hello", "purpose": "something else"},
            {"app": "hello"},
            {**CONTEXT, "extra": "pair"},
            {},
            {"App": "hello", "purpose": "contract"},
        ],
        ids=["changed-value", "missing-pair", "added-pair", "empty", "renamed-key"],
    )
    def test_decrypt_with_another_context_is_refused(
        self, key: KeyInfo, backend: Kms, wrong: dict[str, str]
    ) -> None:
        blob = backend.encrypt(key.key_id, PLAINTEXT, CONTEXT)
        with pytest.raises(CryptoError):
            backend.decrypt(key.key_id, blob, wrong)

    def test_a_changed_ciphertext_is_refused(self, key: KeyInfo, backend: Kms) -> None:
        blob = bytearray(backend.encrypt(key.key_id, PLAINTEXT, CONTEXT))
        blob[-1] ^= 0x01
        with pytest.raises(CryptoError):
            backend.decrypt(key.key_id, bytes(blob), CONTEXT)

    def test_decrypt_naming_another_key_is_refused(self, backend: Kms) -> None:
        first = backend.create_key(description="encrypts")
        second = backend.create_key(description="is named")
        blob = backend.encrypt(first.key_id, PLAINTEXT, CONTEXT)
        with pytest.raises(CryptoError):  # KMS: IncorrectKeyException
            backend.decrypt(second.key_id, blob, CONTEXT)

    # ------------------------------------------------------------------ data keys

    def test_generate_data_key_gives_32_bytes_and_their_blob(
        self, key: KeyInfo, backend: Kms
    ) -> None:
        result = backend.generate_data_key(key.key_id, CONTEXT)
        assert isinstance(result.plaintext, bytes) and len(result.plaintext) == 32
        assert isinstance(result.ciphertext_blob, bytes) and result.ciphertext_blob
        assert result.ciphertext_for_recipient is None
        assert _same_key(key, result.key_id), result.key_id
        opened = backend.decrypt(key.key_id, result.ciphertext_blob, CONTEXT)
        assert opened.plaintext == result.plaintext
        with pytest.raises(CryptoError):
            backend.decrypt(key.key_id, result.ciphertext_blob, {"app": "hello"})

    def test_generate_data_key_number_of_bytes_and_freshness(
        self, key: KeyInfo, backend: Kms
    ) -> None:
        short = backend.generate_data_key(key.key_id, CONTEXT, number_of_bytes=16)
        assert short.plaintext is not None and len(short.plaintext) == 16
        first = backend.generate_data_key(key.key_id, CONTEXT)
        second = backend.generate_data_key(key.key_id, CONTEXT)
        assert first.plaintext != second.plaintext

    # ------------------------------------------------------------------ grants

    def test_a_new_key_has_no_grants(self, key: KeyInfo, backend: Kms) -> None:
        assert backend.list_grants(key.key_id) == []

    def _grant(self, backend: Kms, key: KeyInfo, caller: str) -> tuple[str, GrantInfo]:
        self._needs(backend, "create_grant")
        grantee = f"arn:aws:iam::{account_of(caller)}:role/contract-grantee"
        grant_id = backend.create_grant(  # type: ignore[attr-defined]
            key.key_id,
            grantee_principal=grantee,
            operations=["Decrypt", "GenerateDataKey"],
            retiring_principal=caller,
            name="contract-grant",
            constraints={"EncryptionContextSubset": {"purpose": "contract"}},
        )
        assert isinstance(grant_id, str) and grant_id
        [grant] = backend.list_grants(key.key_id)
        return grant_id, grant

    def test_a_created_grant_is_listed(self, key: KeyInfo, backend: Kms, caller: str) -> None:
        grant_id, grant = self._grant(backend, key, caller)
        assert isinstance(grant, GrantInfo)
        assert grant.grant_id == grant_id
        assert _same_key(key, grant.key_id), grant.key_id
        assert grant.grantee_principal.endswith(":role/contract-grantee")
        assert sorted(grant.operations) == ["Decrypt", "GenerateDataKey"]
        assert grant.retiring_principal == caller
        assert grant.name == "contract-grant"
        assert grant.encryption_context_subset == {"purpose": "contract"}
        assert grant.encryption_context_equals is None

    def test_grants_survive_a_policy_change(self, key: KeyInfo, backend: Kms, caller: str) -> None:
        grant_id, _ = self._grant(backend, key, caller)
        backend.put_key_policy(key.key_id, admin_policy(caller))
        assert [g.grant_id for g in backend.list_grants(key.key_id)] == [grant_id]

    def test_a_retired_grant_is_gone(self, key: KeyInfo, backend: Kms, caller: str) -> None:
        grant_id, _ = self._grant(backend, key, caller)
        self._needs(backend, "retire_grant")
        backend.retire_grant(key.key_id, grant_id)  # type: ignore[attr-defined]
        assert backend.list_grants(key.key_id) == []

    def test_a_revoked_grant_is_gone(self, key: KeyInfo, backend: Kms, caller: str) -> None:
        grant_id, _ = self._grant(backend, key, caller)
        self._needs(backend, "revoke_grant")
        backend.revoke_grant(key.key_id, grant_id)  # type: ignore[attr-defined]
        assert backend.list_grants(key.key_id) == []

    # ------------------------------------------------------------------ deletion

    def test_schedule_key_deletion_makes_the_key_unusable(self, key: KeyInfo, backend: Kms) -> None:
        blob = backend.encrypt(key.key_id, PLAINTEXT, CONTEXT)
        info = backend.schedule_key_deletion(key.key_id, pending_window_days=7)
        assert _same_key(key, info.key_id) and info.state == "PendingDeletion"
        assert info.deletion_date
        described = backend.describe_key(key.key_id)
        assert (described.state, described.deletion_date) == ("PendingDeletion", info.deletion_date)
        with pytest.raises(InvalidKeyState):
            backend.encrypt(key.key_id, PLAINTEXT, CONTEXT)
        with pytest.raises(InvalidKeyState):
            backend.decrypt(key.key_id, blob, CONTEXT)
        with pytest.raises(InvalidKeyState):
            backend.generate_data_key(key.key_id, CONTEXT)

    @pytest.mark.parametrize("days", [6, 31])
    def test_schedule_key_deletion_needs_7_to_30_days(
        self, key: KeyInfo, backend: Kms, days: int
    ) -> None:
        with pytest.raises(ValidationError):
            backend.schedule_key_deletion(key.key_id, pending_window_days=days)
        assert backend.describe_key(key.key_id).state == "Enabled"

    # ------------------------------------------------------------------ identity

    def test_caller_arn_is_an_iam_principal(self, caller: str) -> None:
        account_of(caller)
        assert ":assumed-role/" not in caller and ":sts:" not in caller, caller
