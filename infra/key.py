"""The enclave's KMS key, locked to the image's PCR0 from the moment CloudFormation creates it.

Its policy is the canonical first-boot policy
(:func:`enclave_core.kmspolicy.canonical.render_policy`) for the image's PCR0 and the instance
role, plus ``AccountAdministrationWithoutKeyUse``
(:data:`~enclave_core.kmspolicy.canonical.ACCOUNT_ADMIN_ACTIONS`), so the runtime finds it locked
with no grants. The policy never changes and the key is retained; why: docs/architecture.md,
"The CDK stack".
"""

from __future__ import annotations

from typing import Any

from enclave_core.errors import ConfigError, ValidationError
from enclave_core.kmspolicy.canonical import (
    ACCOUNT_ADMIN_ACTIONS,
    ACCOUNT_ADMIN_SID,
    EnclaveKeyPolicy,
    render_policy,
)
from enclave_core.pcrs import normalise_pcr

__all__ = ["ACCOUNT_ADMIN_ACTIONS", "ACCOUNT_ADMIN_SID", "enclave_key_policy", "normalize_pcr0"]


def normalize_pcr0(value: str) -> str:
    """A PCR0 as 96 lower-case hex digits (SHA-384).

    :raises ConfigError: naming what is wrong, when ``value`` is not 96 hex digits or is the
        all-zero PCR0 of a debug-mode enclave (a key locked to it would open for any image).
    """
    try:
        return normalise_pcr(value, "PCR0")
    except ValidationError as exc:
        raise ConfigError(str(exc)) from None


def enclave_key_policy(*, pcr0_hex: str, role_arn: str, account_root_arn: str) -> dict[str, Any]:
    """The key policy the stack creates the key with.

    :param pcr0_hex: the image's PCR0; only a Recipient document with this PCR0 decrypts.
    :param role_arn: the instance role's ARN (a CDK token in the stack).
    :param account_root_arn: ``arn:<partition>:iam::<account>:root`` (a token in the stack).
    :returns: the canonical first-boot policy with the account statement.
    """
    params = EnclaveKeyPolicy(
        principal=role_arn, pcr0=normalize_pcr0(pcr0_hex), account_root=account_root_arn
    )
    return render_policy(params)
