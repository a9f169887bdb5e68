"""Tests for the test-only KMS Recipient shim server (``tests/services/kms_shim_server.py``).

The ``aws`` KMS backend talks to the shim over HTTP, as a runtime in its own process does; the
shim checks Recipients, policies and key states, and forwards to this session's moto server.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from enclave_plugins.aws_kms import AwsKms
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.crypto.cms import open_ciphertext_for_recipient
from enclave_core.errors import AccessDenied, CryptoError, InvalidKeyState
from enclave_core.kmspolicy.canonical import locked_policy
from enclave_core.plugin.interfaces import Recipient
from tests.helpers import backend_context
from tests.services.kms_recipient_shim import MOTO_PRINCIPAL
from tests.services.kms_shim_server import KmsShimServer

CONTEXT = {"app": "hello", "purpose": "storage-dek"}
SECRET = b"a static secret through the shim server"
PCR0 = b"\x07" * 48

StartShim = Callable[..., KmsShimServer]


def _nsm(tmp_path: Path, name: str, pcr0: bytes = PCR0) -> SimulatedNsm:
    (tmp_path / f"{name}-app").mkdir(exist_ok=True)
    return SimulatedNsm(state_dir=tmp_path / name, app_dir=tmp_path / f"{name}-app", pcr0=pcr0)


def _recipient(nsm: SimulatedNsm) -> tuple[Recipient, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Recipient(attestation_document=nsm.attestation(public_key=spki)), key


def _kms(tmp_path: Path, endpoint: str) -> AwsKms:
    context = backend_context(tmp_path, app_dir=tmp_path / "app")
    options = {"endpoint_url": endpoint, "sts_endpoint_url": endpoint, "max_attempts": 1}
    return AwsKms.from_options(AwsKms.Options().load(options), context)


def _client(service: str, endpoint: str) -> Any:
    return boto3.session.Session(region_name="us-east-1").client(service, endpoint_url=endpoint)


def test_recipient_answers_open_with_the_enclave_key(
    kms_shim_endpoint: StartShim, moto_reset: str, tmp_path: Path
) -> None:
    root_path = tmp_path / "stack" / "dev-root.pem"
    shim = kms_shim_endpoint(root_path)  # the stack's NSM has not run yet
    kms = _kms(tmp_path, shim.url)
    key = kms.create_key(description="through the shim").key_id
    blob = kms.encrypt(key, SECRET, CONTEXT)
    nsm = _nsm(tmp_path, "stack")  # writes <state_dir>/dev-root.pem
    recipient, private = _recipient(nsm)
    assert root_path.exists()
    result = kms.decrypt(key, blob, CONTEXT, recipient)
    assert result.plaintext is None and result.ciphertext_for_recipient is not None
    assert SECRET not in result.ciphertext_for_recipient
    assert open_ciphertext_for_recipient(result.ciphertext_for_recipient, private) == SECRET
    generated = kms.generate_data_key(key, CONTEXT, recipient=recipient)
    assert generated.plaintext is None and generated.ciphertext_for_recipient is not None
    data_key = open_ciphertext_for_recipient(generated.ciphertext_for_recipient, private)
    assert len(data_key) == 32
    assert generated.ciphertext_blob is not None
    assert kms.decrypt(key, generated.ciphertext_blob, CONTEXT).plaintext == data_key
    assert [v.module_id for v in shim.verified] == [nsm.module_id] * 2
    assert shim.verified[0].pcrs[0] == PCR0
    with pytest.raises(CryptoError):  # another key cannot open it
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        open_ciphertext_for_recipient(result.ciphertext_for_recipient, other)


def test_root_is_read_lazily_and_again_when_it_changes(
    kms_shim_endpoint: StartShim, moto_reset: str, tmp_path: Path
) -> None:
    root_path = tmp_path / "trusted" / "dev-root.pem"
    shim = kms_shim_endpoint(root_path)
    kms = _kms(tmp_path, shim.url)
    key = kms.create_key().key_id
    blob = kms.encrypt(key, SECRET, CONTEXT)
    first, second = _nsm(tmp_path, "first"), _nsm(tmp_path, "second")
    first_recipient, first_key = _recipient(first)
    second_recipient, second_key = _recipient(second)
    with pytest.raises(AccessDenied) as missing:
        kms.decrypt(key, blob, CONTEXT, first_recipient)
    assert "does not exist" in str(missing.value)
    root_path.parent.mkdir()
    shutil.copy(tmp_path / "first" / "dev-root.pem", root_path)
    sealed = kms.decrypt(key, blob, CONTEXT, first_recipient).ciphertext_for_recipient
    assert sealed is not None and open_ciphertext_for_recipient(sealed, first_key) == SECRET
    with pytest.raises(AccessDenied):  # signed under another dev root
        kms.decrypt(key, blob, CONTEXT, second_recipient)
    shutil.copy(tmp_path / "second" / "dev-root.pem", root_path)
    sealed = kms.decrypt(key, blob, CONTEXT, second_recipient).ciphertext_for_recipient
    assert sealed is not None and open_ciphertext_for_recipient(sealed, second_key) == SECRET
    with pytest.raises(AccessDenied) as stale:
        kms.decrypt(key, blob, CONTEXT, first_recipient)
    assert "attestation document is invalid" in str(stale.value)


def test_key_locked_to_another_pcr0_is_denied(
    kms_shim_endpoint: StartShim, moto_reset: str, tmp_path: Path
) -> None:
    nsm = _nsm(tmp_path, "stack")
    shim = kms_shim_endpoint(tmp_path / "stack" / "dev-root.pem")
    kms = _kms(tmp_path, shim.url)
    assert kms.caller_arn() == MOTO_PRINCIPAL  # STS passes through to moto
    key = kms.create_key().key_id
    blob = kms.encrypt(key, SECRET, CONTEXT)
    other = locked_policy(pcr0_hex=(b"\x08" * 48).hex(), principal_arn=kms.caller_arn())
    kms.put_key_policy(key, other, bypass_lockout_safety_check=True)
    recipient, private = _recipient(nsm)
    for call in (
        lambda: kms.decrypt(key, blob, CONTEXT, recipient),
        lambda: kms.generate_data_key(key, CONTEXT, recipient=recipient),
        lambda: kms.decrypt(key, blob, CONTEXT),  # no attestation at all
    ):
        with pytest.raises(AccessDenied) as denied:
            call()
        assert key in str(denied.value)
    assert shim.refused == [
        ("Decrypt", "AccessDeniedException"),
        ("GenerateDataKey", "AccessDeniedException"),
        ("Decrypt", "AccessDeniedException"),
    ]
    mine = locked_policy(pcr0_hex=PCR0.hex(), principal_arn=kms.caller_arn())
    locked = kms.create_key(policy=mine, bypass_lockout_safety_check=True).key_id
    generated = kms.generate_data_key(locked, CONTEXT, recipient=recipient)
    assert generated.ciphertext_for_recipient is not None and generated.ciphertext_blob
    data_key = open_ciphertext_for_recipient(generated.ciphertext_for_recipient, private)
    sealed = kms.decrypt(locked, generated.ciphertext_blob, CONTEXT, recipient)
    assert sealed.ciphertext_for_recipient is not None
    assert open_ciphertext_for_recipient(sealed.ciphertext_for_recipient, private) == data_key


def test_without_recipient_requests_pass_through(
    kms_shim_endpoint: StartShim, moto_reset: str, tmp_path: Path
) -> None:
    shim = kms_shim_endpoint()
    kms = _kms(tmp_path, shim.url)
    key = kms.create_key().key_id
    blob = kms.encrypt(key, SECRET, CONTEXT)
    assert kms.decrypt(key, blob, CONTEXT).plaintext == SECRET
    generated = kms.generate_data_key(key, CONTEXT, number_of_bytes=16)
    assert generated.plaintext is not None and len(generated.plaintext) == 16
    assert shim.kms_calls == ["CreateKey", "Encrypt", "Decrypt", "GenerateDataKey"]
    _client("kms", moto_reset).disable_key(KeyId=key)  # key states are enforced too
    with pytest.raises(InvalidKeyState):
        kms.decrypt(key, blob, CONTEXT)
    # S3 and SSM through the shim land in moto unchanged
    s3, ssm = _client("s3", shim.url), _client("ssm", shim.url)
    s3.create_bucket(Bucket="enclave-data")
    body = bytes(range(256)) * 40
    s3.put_object(Bucket="enclave-data", Key="objects/a b", Body=body)
    assert s3.head_object(Bucket="enclave-data", Key="objects/a b")["ContentLength"] == len(body)
    direct = _client("s3", moto_reset).get_object(Bucket="enclave-data", Key="objects/a b")
    assert direct["Body"].read() == body
    assert s3.get_object(Bucket="enclave-data", Key="objects/a b")["Body"].read() == body
    listed = s3.list_objects_v2(Bucket="enclave-data", Prefix="objects/")
    assert [o["Key"] for o in listed["Contents"]] == ["objects/a b"]
    ssm.put_parameter(Name="/dev/hello/KMSKeyID", Value=key, Type="String")
    stored = _client("ssm", moto_reset).get_parameter(Name="/dev/hello/KMSKeyID")
    assert stored["Parameter"]["Value"] == key


def test_stopped_by_its_handle(moto_reset: str, tmp_path: Path) -> None:
    with KmsShimServer(upstream=moto_reset, root=tmp_path / "dev-root.pem") as server:
        url = server.url
        assert "KeyMetadata" in _client("kms", url).create_key()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
