"""The data keys an enclave keeps in the parameter store: its static secrets and its storage key.

Each is 32 random bytes that KMS generated (GenerateDataKey with a Recipient), stored as the base64
of its KMS ciphertext under ``{name}/Ciphertext``, and bound by its encryption context to the app
and its purpose, so one ciphertext cannot stand in for another.
"""

from __future__ import annotations

from dataclasses import dataclass

from enclave_core.config import Config

#: The name of the storage data key among the data keys (and in migration parameters).
DEK_NAME = "StorageDEK"
DATA_KEY_BYTES = 32


def static_secret_context(app: str, secret: str) -> dict[str, str]:
    """The KMS encryption context of a static secret."""
    return {"app": app, "purpose": "static-secret", "secret": secret}


def storage_dek_context(app: str) -> dict[str, str]:
    """The KMS encryption context of the storage data key."""
    return {"app": app, "purpose": "storage-dek"}


@dataclass(frozen=True)
class DataKey:
    """One data key: its name, where its ciphertext lives, and its encryption context."""

    name: str
    context: dict[str, str]
    what: str  # how errors name it

    @property
    def param(self) -> str:
        """The parameter holding its KMS ciphertext (base64)."""
        return f"{self.name}/Ciphertext"


def data_keys(config: Config) -> list[DataKey]:
    """Every data key of the app: the static secrets in config order, then the storage key."""
    keys = [
        DataKey(s.name, static_secret_context(config.name, s.name), f"static secret {s.name!r}")
        for s in config.secrets.static
    ]
    keys.append(DataKey(DEK_NAME, storage_dek_context(config.name), "storage data key"))
    return keys
