"""The shim server gives moto's keys the metadata and grant behaviour of KMS, over HTTP.

moto omits ``MultiRegion`` for a key made without it, ignores ``CustomKeyStoreId`` and never
consults grants (``tests/services/kms_recipient_shim.py`` lists what it corrects); a runtime in
its own process reaches moto through ``tests/services/kms_shim_server.py``, so the corrections
must hold there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from enclave_plugins.aws_kms import AwsKms

from enclave_core.errors import AccessDenied, InvalidKeyState
from tests.helpers import backend_context
from tests.services.kms_recipient_shim import MOTO_PRINCIPAL
from tests.services.kms_shim_server import KmsShimServer

CONTEXT = {"app": "hello"}
OTHER = "arn:aws:iam::123456789012:role/other"
NOBODY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": OTHER}, "Action": "kms:*", "Resource": "*"}
    ],
}


@pytest.fixture
def shim_kms(tmp_path: Path, kms_shim_endpoint: Callable[..., KmsShimServer]) -> AwsKms:
    server = kms_shim_endpoint()
    context = backend_context(tmp_path, app_dir=tmp_path / "app")
    options = {"endpoint_url": server.url, "sts_endpoint_url": server.url, "max_attempts": 1}
    return AwsKms.from_options(AwsKms.Options().load(options), context)


def test_key_metadata_is_what_kms_reports(shim_kms: AwsKms, moto_reset: str) -> None:
    plain = shim_kms.describe_key(shim_kms.create_key().key_id)
    assert (plain.origin, plain.multi_region, plain.custom_key_store_id) == (
        "AWS_KMS",
        False,
        None,
    )
    stored = shim_kms.create_key(custom_key_store_id="cks-1234567890abcdef0")
    assert (stored.origin, stored.custom_key_store_id) == ("AWS_CLOUDHSM", "cks-1234567890abcdef0")
    assert shim_kms.describe_key(stored.arn) == stored
    external = shim_kms.create_key(origin="EXTERNAL")
    assert external.state == "PendingImport"
    with pytest.raises(InvalidKeyState):
        shim_kms.encrypt(external.key_id, b"x", CONTEXT)


def test_grants_are_honoured_after_a_policy_change(shim_kms: AwsKms, moto_reset: str) -> None:
    info = shim_kms.create_key()
    blob = shim_kms.encrypt(info.key_id, b"secret", CONTEXT)
    grant_id = shim_kms.create_grant(
        info.key_id,
        grantee_principal=MOTO_PRINCIPAL,
        operations=["Decrypt", "RetireGrant"],
        constraints={"EncryptionContextEquals": CONTEXT},
    )
    shim_kms.put_key_policy(info.key_id, json.dumps(NOBODY), bypass_lockout_safety_check=True)
    assert shim_kms.decrypt(info.key_id, blob, CONTEXT).plaintext == b"secret"
    with pytest.raises(AccessDenied):
        shim_kms.encrypt(info.key_id, b"x", CONTEXT)
    with pytest.raises(AccessDenied):
        shim_kms.revoke_grant(info.key_id, grant_id)  # RevokeGrant: the key policy only
    shim_kms.retire_grant(info.arn, grant_id)  # the grantee may: the grant lists RetireGrant
    with pytest.raises(AccessDenied):
        shim_kms.decrypt(info.key_id, blob, CONTEXT)
