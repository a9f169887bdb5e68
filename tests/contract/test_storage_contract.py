"""The Storage contract on the built-in storage backends: ``local``, and ``s3`` on this session's
moto server (over HTTP, as ``tests/plugins/test_s3_storage.py`` runs it), with and without a key
prefix."""

from __future__ import annotations

from typing import Any

import pytest
from enclave_plugins.local_storage import LocalStorage
from enclave_plugins.s3_storage import S3Storage

from enclave_core.testing.contracts import StorageContract

BUCKET = "enclave-contract"


class TestLocalStorage(StorageContract):
    backend_class = LocalStorage


class TestS3Storage(StorageContract):
    backend_class = S3Storage

    @pytest.fixture
    def backend_options(self, moto_reset: str, boto3_session: Any) -> dict[str, Any]:
        boto3_session.client("s3", endpoint_url=moto_reset).create_bucket(Bucket=BUCKET)
        return {"bucket": BUCKET, "prefix": "apps/hello", "endpoint_url": moto_reset}


class TestS3StorageWithoutPrefix(StorageContract):
    backend_class = S3Storage

    @pytest.fixture
    def backend_options(self, moto_reset: str, boto3_session: Any) -> dict[str, Any]:
        boto3_session.client("s3", endpoint_url=moto_reset).create_bucket(Bucket=BUCKET)
        return {"bucket": BUCKET, "endpoint_url": moto_reset}
