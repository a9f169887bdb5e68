"""The backend contract suite: what every Storage, Secrets and Kms backend must do, written once.

Subclass a contract in your plugin's tests and name the backend (README, "Checking a backend: the
contract suite")::

    class TestMyStorage(StorageContract):
        backend_class = MyStorage
"""

from __future__ import annotations

from enclave_core.testing.contract_base import BackendContract
from enclave_core.testing.kms_contract import KmsContract
from enclave_core.testing.secrets_contract import SecretsContract
from enclave_core.testing.storage_contract import StorageContract

__all__ = ["BackendContract", "KmsContract", "SecretsContract", "StorageContract"]
