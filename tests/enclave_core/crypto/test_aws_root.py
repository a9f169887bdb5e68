"""Tests for enclave_core.crypto.aws_root: the shipped AWS Nitro root, pinned by fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from enclave_core.crypto import aws_root
from enclave_core.crypto.aws_root import AWS_ROOT_G1_SHA256, aws_nitro_root, load_root_pem
from enclave_core.errors import AttestationError
from tests.enclave_core.crypto.test_attestation import DEV_ROOT, TESTDATA


@pytest.fixture
def fresh_root_cache() -> Iterator[None]:
    aws_nitro_root.cache_clear()
    yield
    aws_nitro_root.cache_clear()


def test_the_shipped_root_is_the_published_one(fresh_root_cache: None) -> None:
    root = aws_nitro_root()
    der = root.public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == AWS_ROOT_G1_SHA256
    assert root.subject.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    assert load_root_pem(TESTDATA / "root-G1.pem") == root


def test_a_replaced_root_file_is_refused(
    fresh_root_cache: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / aws_root.AWS_ROOT_G1_FILE).write_bytes(DEV_ROOT.read_bytes())
    monkeypatch.setattr(aws_root.resources, "files", lambda package: tmp_path)
    with pytest.raises(AttestationError, match=f"expected the pinned {AWS_ROOT_G1_SHA256}; refus"):
        aws_nitro_root()


def test_load_root_pem_wants_exactly_one_certificate(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="cannot read"):
        load_root_pem(tmp_path / "missing.pem")
    two = tmp_path / "two.pem"
    two.write_bytes(DEV_ROOT.read_bytes() * 2)
    with pytest.raises(AttestationError, match="expected exactly one certificate, found 2"):
        load_root_pem(two)
    two.write_bytes(b"not a pem")
    with pytest.raises(AttestationError, match="not a PEM certificate"):
        load_root_pem(two)
