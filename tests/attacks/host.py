"""The attacker of docs/threat-model.md: root on the parent instance, holding the enclave's role.

It reaches the backends exactly as the instance role would (the local KMS with the enclave's
principal, the parameter store, the storage folder), measures images as anyone can, and drives the
runtime only through its listeners. It cannot read enclave memory or sign an NSM document.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from enclave_plugins.local_kms import LocalKms

from enclave_core.config import Config
from enclave_core.kmspolicy.canonical import EnclaveKeyPolicy, render_policy
from enclave_core.kmspolicy.evaluation import default_policy
from enclave_core.plugin.interfaces import Secrets
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.runtime.datakeys import static_secret_context
from tests.enclave_core.runtime.migration_fixtures import local_kms, params

ACCOUNT = "000000000000"


@dataclass
class Host:
    """What root on the parent instance holds: the role's KMS, the parameters, the images."""

    config: Config

    @property
    def kms(self) -> LocalKms:
        """KMS, called as the instance role (the enclave's own principal)."""
        return local_kms(self.config)

    @property
    def secrets(self) -> Secrets:
        """The parameter store, which the host writes at will."""
        return params(self.config, get_plugin_manager())

    @property
    def principal(self) -> str:
        """The role's ARN, which every enclave policy names."""
        return self.kms.caller_arn()

    def exact_policy(self, pcr0: str, **extra: Any) -> dict[str, Any]:
        """The canonical policy the enclave expects for ``pcr0`` (anyone can compute it)."""
        return render_policy(EnclaveKeyPolicy(principal=self.principal, pcr0=pcr0, **extra))

    def open_key(self, **create: Any) -> str:
        """A key with the policy CreateKey gives by default: the account may do everything."""
        return self.kms.create_key(description="the host's key", **create).key_id

    def backdoored_key(self, pcr0: str) -> str:
        """The grant attack: a Decrypt grant for the host, then exactly the enclave's policy."""
        key = self.open_key()
        self.kms.create_grant(key, grantee_principal=self.principal, operations=["Decrypt"])
        self.kms.put_key_policy(key, self.exact_policy(pcr0), bypass_lockout_safety_check=True)
        return key

    def forge_secret(self, key_id: str, secret: str, value: bytes) -> str:
        """Encrypt a value of the host's choice as the static secret ``secret``; store it."""
        blob = self.kms.encrypt(key_id, value, static_secret_context(self.config.name, secret))
        encoded = base64.b64encode(blob).decode("ascii")
        self.secrets.put(f"{secret}/Ciphertext", encoded)
        return encoded


def default_key_policy() -> dict[str, Any]:
    """CreateKey's default policy in the local KMS's account."""
    return default_policy(ACCOUNT)
