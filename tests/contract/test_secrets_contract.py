"""The Secrets contract on the built-in secrets backends: ``local``, and ``ssm`` on this session's
moto server (over HTTP, as ``tests/plugins/test_ssm_secrets.py`` runs it)."""

from __future__ import annotations

from typing import Any

import pytest
from enclave_plugins.local_secrets import LocalSecrets
from enclave_plugins.ssm_secrets import SsmSecrets

from enclave_core.testing.contracts import SecretsContract


class TestLocalSecrets(SecretsContract):
    backend_class = LocalSecrets


class TestSsmSecrets(SecretsContract):
    backend_class = SsmSecrets

    @pytest.fixture
    def backend_options(self, moto_reset: str) -> dict[str, Any]:
        return {"endpoint_url": moto_reset}
