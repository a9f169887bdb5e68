"""The enclave's own check of a KMS key: only the attested image can ever use it, now or later.

:func:`verify_enclave_key` runs at every boot (on ``KMSKeyID``), when the old enclave creates a
migration key, and at export: DescribeKey (enabled, customer managed, ``AWS_KMS`` origin,
single-Region, symmetric, own account), then GetKeyPolicy (exactly a canonical policy), then
ListGrants (empty), in that order. docs/threat-model.md, "Keys: what the enclave accepts", says
why each step is there.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from enclave_core.errors import EnclaveError, KeyRefused, NotFound
from enclave_core.kmspolicy.canonical import (
    EnclaveKeyPolicy,
    PolicyMismatch,
    account_of,
    account_root_arn,
    match_policy,
    policy_sha256,
)
from enclave_core.plugin.interfaces import KeyInfo, Kms

#: What DescribeKey must report, field by field (None, "not reported", is refused too).
REQUIRED_METADATA: tuple[tuple[str, Any, str], ...] = (
    ("key_manager", "CUSTOMER", "an AWS managed key"),
    ("origin", "AWS_KMS", "key material from outside KMS (imported, or a custom key store)"),
    ("custom_key_store_id", None, "a custom key store, whose owner holds the material"),
    ("multi_region", False, "a multi-Region key, whose replicas carry policies of their own"),
    ("key_spec", "SYMMETRIC_DEFAULT", "not a symmetric encryption key"),
    ("key_usage", "ENCRYPT_DECRYPT", "not an encryption key"),
)


class KeyPolicyRefused(KeyRefused):
    """The key's policy is not the canonical one for this enclave (its metadata was fine)."""


@dataclass(frozen=True)
class KeyVerdict:
    """A key :func:`verify_enclave_key` accepted, with what its canonical policy says."""

    key_id: str
    arn: str
    policy: EnclaveKeyPolicy
    policy_sha256: str

    @property
    def kind(self) -> str:
        """``migration`` for a key an old enclave made for its successor, else ``genesis``."""
        return "migration" if self.policy.migration else "genesis"

    def names(self, key: str) -> bool:
        """Whether ``key`` (an id or an ARN) names this key."""
        return any(hmac.compare_digest(key, known) for known in (self.key_id, self.arn))


def check_metadata(info: KeyInfo, principal: str) -> None:
    """Step 1 on DescribeKey's answer; KeyRefused naming the first field that is not right."""
    where = f"KMS key {info.key_id}"
    if info.state != "Enabled":
        raise KeyRefused(f"{where} is {info.state}, not Enabled")
    for field, wanted, why in REQUIRED_METADATA:
        got = getattr(info, field, None)
        if field == "custom_key_store_id":
            if got:
                raise KeyRefused(f"{where} is in {why} ({got})")
            continue
        if got is None:
            raise KeyRefused(
                f"{where}: the KMS backend does not report {field}, so the key cannot be checked"
            )
        if got != wanted:
            raise KeyRefused(f"{where} is {why}: {field} is {got!r}, expected {wanted!r}")
    if account_of(info.arn) is None or account_of(info.arn) != account_of(principal):
        raise KeyRefused(
            f"{where} ({info.arn}) is not in the enclave's account {account_of(principal)}"
        )


def check_policy(
    policy: Any,
    *,
    key_id: str,
    principal: str,
    pcr0: str,
    pcr8: str | None,
    app: str,
) -> EnclaveKeyPolicy:
    """Step 2: the exact canonical policy for ``principal`` and image ``pcr0``.

    :param pcr8: this image's PCR8 when it is signed (non-zero), else None. A key may pin the same
        PCR8 or none (a key made by an unsigned predecessor); never another.
    """
    where = f"KMS key {key_id}"
    try:
        params = match_policy(policy)
    except PolicyMismatch as exc:
        raise KeyPolicyRefused(f"{where}: {exc}") from None
    if not hmac.compare_digest(params.principal, principal):
        raise KeyPolicyRefused(f"{where}: its policy names {params.principal}, not {principal}")
    if params.pcr0 != pcr0:
        raise KeyPolicyRefused(
            f"{where} is locked to PCR0 {params.pcr0[:16]}…, not this enclave's PCR0 "
            f"{pcr0[:16]}… (a changed image needs `enclave migrate`)"
        )
    if params.pcr8 is not None and params.pcr8 != pcr8:
        raise KeyPolicyRefused(
            f"{where} is locked to images signed with PCR8 {params.pcr8[:16]}…, and this "
            f"enclave's PCR8 is {(pcr8 or '0' * 96)[:16]}…"
        )
    if params.app is not None and params.app != app:
        raise KeyPolicyRefused(f"{where} was made for the app {params.app!r}, not {app!r}")
    if params.account_root is not None and params.account_root != account_root_arn(principal):
        raise KeyPolicyRefused(
            f"{where}: its policy lets the account {params.account_root} administer it"
        )
    return params


def check_grants(kms: Kms, key_id: str) -> None:
    """Step 3: no grant on the key (a grant survives every policy change)."""
    lister = getattr(kms, "list_grants", None)
    if not callable(lister):
        raise KeyRefused(
            f"KMS key {key_id}: the KMS backend cannot list grants, so the key cannot be checked"
        )
    grants = lister(key_id)
    if grants:
        first = grants[0]
        raise KeyRefused(
            f"KMS key {key_id} has {len(grants)} grant(s), for example {first.grant_id} letting "
            f"{first.grantee_principal} call {', '.join(first.operations)}: a grant outlives any "
            "policy, so this key cannot be trusted"
        )


def verify_enclave_key(
    kms: Kms,
    key_id: str,
    *,
    principal: str,
    pcr0: str,
    pcr8: str | None,
    app: str,
) -> KeyVerdict:
    """Run the three checks on ``key_id``; return the verdict or raise KeyRefused.

    :param principal: the enclave's IAM role (``kms.caller_arn()``), the only one the policy
        may name.
    :param pcr0: the image that must be the only one able to decrypt (lower-case hex).
    :param pcr8: that image's PCR8 when signed, else None.
    """
    try:
        info = kms.describe_key(key_id)
    except NotFound:
        raise KeyRefused(f"KMS key {key_id} does not exist") from None
    except EnclaveError as exc:
        raise KeyRefused(f"KMS key {key_id} cannot be described: {exc}") from None
    check_metadata(info, principal)
    try:
        policy = kms.get_key_policy(key_id)
    except EnclaveError as exc:
        raise KeyRefused(f"KMS key {key_id}: its policy cannot be read: {exc}") from None
    params = check_policy(policy, key_id=key_id, principal=principal, pcr0=pcr0, pcr8=pcr8, app=app)
    check_grants(kms, key_id)
    return KeyVerdict(
        key_id=info.key_id, arn=info.arn, policy=params, policy_sha256=policy_sha256(policy)
    )
