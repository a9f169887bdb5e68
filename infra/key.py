"""The enclave's KMS key, locked to the image's PCR0 from the moment CloudFormation creates it.

The runtime checks its key on every boot with :func:`enclave_core.kms_policy.analyse` and, when
it finds the key unlocked, replaces the policy with
:func:`~enclave_core.kms_policy.locked_policy`. The stack skips that window: its policy is
``locked_policy(pcr0, role)`` from the start, plus one statement for the account
(:data:`ACCOUNT_ADMIN_ACTIONS`), so ``analyse`` finds it locked, attested to exactly this PCR0
and without unconditioned decryption, and the runtime never needs ``kms:PutKeyPolicy``.

Why the account statement: CloudFormation itself calls the key after ``CreateKey``
(``EnableKeyRotation``, then describe, rotation status and tags to read the resource back, tags
and description on updates), as the deploying principal, through IAM. The statement gives the
account's IAM principals exactly those, plus ``ScheduleKeyDeletion`` and
``CancelKeyDeletion`` (an operator can retire the key or undo a deletion scheduled by mistake or
by a compromised host, which the prior art could not). It gives no way to plaintext
(``Decrypt``, ``GenerateDataKey*``, ``ReEncrypt*``), no ``Encrypt`` (forged ciphertexts), and
nothing that changes who may use the key (``PutKeyPolicy``, ``CreateGrant``, ``ReplicateKey``).

Consequences, by design:

- ``CreateKey`` needs ``BypassPolicyLockoutSafetyCheck`` (the deploying principal cannot
  change the policy afterwards), which the template sets.
- The key policy can never change, by CloudFormation or anyone: a new image (a new PCR0) goes
  through ``enclave migrate``, which moves the secrets to a new key; ``enclave deploy`` must
  keep synthesizing with the PCR0 the key was created with (the ``LockedPCR0`` output). A
  template whose key policy differs from the deployed one fails to update, harmlessly.
- The key is retained when the stack is deleted (``enclave destroy`` schedules its deletion).
"""

from __future__ import annotations

import re
from typing import Any

from enclave_core.errors import ConfigError
from enclave_core.kms_policy import locked_policy

__all__ = ["ACCOUNT_ADMIN_ACTIONS", "ACCOUNT_ADMIN_SID", "enclave_key_policy", "normalize_pcr0"]

ACCOUNT_ADMIN_SID = "AccountAdministrationWithoutKeyUse"
ACCOUNT_ADMIN_ACTIONS = [
    "kms:CancelKeyDeletion",
    "kms:DescribeKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateKeyDescription",
]
_PCR0 = re.compile(r"^[0-9a-fA-F]{96}$")


def normalize_pcr0(value: str) -> str:
    """A PCR0 as 96 lower-case hex digits (SHA-384).

    :raises ConfigError: naming what is wrong, when ``value`` is not 96 hex digits.
    """
    text = value.strip()
    if not _PCR0.match(text):
        raise ConfigError(f"PCR0 must be 96 hex digits (SHA-384), got {len(text)} characters")
    return text.lower()


def enclave_key_policy(*, pcr0_hex: str, role_arn: str, account_root_arn: str) -> dict[str, Any]:
    """The key policy the stack creates the key with.

    :param pcr0_hex: the image's PCR0; only a Recipient document with this PCR0 decrypts.
    :param role_arn: the instance role's ARN (a CDK token in the stack).
    :param account_root_arn: ``arn:<partition>:iam::<account>:root`` (a token in the stack).
    :returns: :func:`~enclave_core.kms_policy.locked_policy` plus the account statement.
    """
    policy = locked_policy(pcr0_hex=normalize_pcr0(pcr0_hex), principal_arn=role_arn)
    policy["Statement"].append(
        {
            "Sid": ACCOUNT_ADMIN_SID,
            "Effect": "Allow",
            "Principal": {"AWS": account_root_arn},
            "Action": list(ACCOUNT_ADMIN_ACTIONS),
            "Resource": "*",
        }
    )
    return policy
