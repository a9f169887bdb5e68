"""The Kms contract on the built-in KMS backends: ``local``, and ``aws`` on this session's moto
server with the test-only :class:`~tests.services.kms_recipient_shim.KmsRecipientShim` installed
on its boto3 session (moto ignores key policies, the lockout safety check and key states; the
shim applies them as KMS does), as ``tests/plugins/test_aws_kms.py`` runs it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from enclave_plugins.aws_kms import AwsKms
from enclave_plugins.local_kms import LocalKms

from enclave_core.errors import AttestationError
from enclave_core.plugin.interfaces import BackendContext
from enclave_core.testing.contracts import KmsContract
from enclave_core.testing.pytest_plugin import make_context
from tests.services.kms_recipient_shim import KmsRecipientShim


def _no_root() -> x509.Certificate:
    """The contract sends no Recipient: the shim is given no attestation root to trust."""
    raise AttestationError("the contract run trusts no attestation root")


class TestLocalKms(KmsContract):
    backend_class = LocalKms


class TestAwsKms(KmsContract):
    backend_class = AwsKms

    @pytest.fixture
    def backend_options(self, moto_reset: str) -> dict[str, Any]:
        return {"endpoint_url": moto_reset, "sts_endpoint_url": moto_reset}

    @pytest.fixture
    def enclave_context_factory(
        self, tmp_path: Path, moto_reset: str
    ) -> Callable[..., BackendContext]:
        shim = KmsRecipientShim(root=_no_root, endpoint_url=moto_reset)
        session = shim.install(boto3.session.Session(region_name="us-east-1"))

        def factory(**fields: Any) -> BackendContext:
            return make_context(tmp_path, **{"session": session, **fields})

        return factory
