"""Tests for the ``aws`` KMS backend, over HTTP against this session's moto server.

moto ignores Recipient, key policies and key states, so most tests install the test-only
:class:`~tests.services.kms_recipient_shim.KmsRecipientShim` on the session, which makes moto answer
as KMS does there (requests still go to moto over HTTP); ``raw_kms`` talks to moto without it. Error
codes moto never sends come from a small canned HTTP server on loopback.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import marshmallow
import pytest
from botocore.credentials import CredentialProvider, RefreshableCredentials
from botocore.stub import Stubber
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from enclave_plugins.aws_kms import AwsKms
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.aws.clients import principal_arn
from enclave_core.config import Config
from enclave_core.crypto.cms import open_ciphertext_for_recipient
from enclave_core.crypto.devca import DevCa
from enclave_core.errors import (
    AccessDenied,
    BackendError,
    CryptoError,
    EnclaveError,
    InvalidKeyState,
    NotFound,
    ValidationError,
)
from enclave_core.kmspolicy.canonical import EnclaveKeyPolicy, locked_policy, render_policy
from enclave_core.plugin.backends import build_backend, plugins_for, validate_backends
from enclave_core.plugin.interfaces import BackendContext, GrantInfo, Kms, Recipient
from enclave_core.plugin.manager import get_plugin_manager
from tests.helpers import backend_context
from tests.services.kms_recipient_shim import MOTO_PRINCIPAL, KmsRecipientShim

CONTEXT = {"app": "hello", "purpose": "storage-dek"}
SECRET = b"the static secret value 0123456789"
POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "root",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ],
}


def _context(tmp_path: Path, session: Any) -> BackendContext:
    return backend_context(tmp_path, app_dir=tmp_path / "app", session=session)


def _build(tmp_path: Path, session: Any, **options: Any) -> AwsKms:
    return AwsKms.from_options(AwsKms.Options().load(options), _context(tmp_path, session))


@pytest.fixture
def nsm_root(tmp_path: Path) -> tuple[SimulatedNsm, Any]:
    """A simulated NSM and its dev root certificate."""
    (tmp_path / "app").mkdir()
    nsm = SimulatedNsm(state_dir=tmp_path / ".enclave", app_dir=tmp_path / "app", pcr0=b"\x07" * 48)
    return nsm, DevCa(tmp_path / ".enclave").root_certificate()


@pytest.fixture
def shim(nsm_root: tuple[SimulatedNsm, Any], moto_reset: str) -> KmsRecipientShim:
    return KmsRecipientShim(root=nsm_root[1], endpoint_url=moto_reset)


@pytest.fixture
def moto_kms(tmp_path: Path, moto_reset: str, shim: KmsRecipientShim) -> AwsKms:
    """The backend on moto, with KMS's Recipient and key-state behaviour supplied by the shim."""
    session = shim.install(boto3.session.Session(region_name="us-east-1"))
    return _build(tmp_path, session, endpoint_url=moto_reset, sts_endpoint_url=moto_reset)


@pytest.fixture
def raw_kms(tmp_path: Path, moto_reset: str, boto3_session: Any) -> AwsKms:
    return _build(tmp_path, boto3_session, endpoint_url=moto_reset)


def _admin(url: str) -> Any:
    return boto3.session.Session(region_name="us-east-1").client("kms", endpoint_url=url)


def _enclave_recipient(nsm: SimulatedNsm) -> tuple[Recipient, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Recipient(attestation_document=nsm.attestation(public_key=spki)), key


def _leaks(error: BaseException, *values: bytes) -> bool:
    text = str(error)
    return any(v.decode("latin-1") in text or base64.b64encode(v).decode() in text for v in values)


# --------------------------------------------------------------------------- registration, config


def test_hook_enclave_register_kms_aws() -> None:
    plugins = get_plugin_manager()
    assert plugins.kms.get("aws") is AwsKms
    assert plugins.kms.owner("aws") == "aws-kms"


def test_options_and_client_config(tmp_path: Path, boto3_session: Any) -> None:
    with pytest.raises(marshmallow.ValidationError):
        AwsKms.Options().load({"bucket": "x"})
    kms = _build(tmp_path, boto3_session, connect_timeout_s=2, read_timeout_s=7, max_attempts=3)
    assert isinstance(kms, Kms)  # the Protocol, structurally
    assert isinstance(kms, AwsKms)
    config = kms.client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert (config.connect_timeout, config.read_timeout) == (2.0, 7.0)
    assert "simple-enclave/" in config.user_agent_extra
    assert kms.client.meta.region_name == "us-east-1"
    assert kms.client.meta.endpoint_url == "https://kms.us-east-1.amazonaws.com"
    assert (
        _build(tmp_path, boto3_session, region="eu-west-2").client.meta.region_name == "eu-west-2"
    )


def test_built_from_enclave_yaml(make_config: Callable[..., Config], moto_reset: str) -> None:
    config = make_config(
        kms={"backend": "aws", "options": {"endpoint_url": moto_reset, "region": "us-east-1"}}
    )
    plugins = plugins_for(config)
    kms = build_backend(config, plugins, "kms")
    assert isinstance(kms, AwsKms)
    info = kms.create_key(description="from yaml")
    assert _admin(moto_reset).describe_key(KeyId=info.key_id)["KeyMetadata"]["Enabled"]
    typo = make_config(kms={"backend": "aws", "options": {"endpoint": moto_reset}})
    assert any(line.startswith("kms.options.endpoint") for line in validate_backends(typo, plugins))


def test_endpoint_env_var_is_honoured_and_option_wins(
    tmp_path: Path, moto_reset: str, boto3_session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", moto_reset)
    kms = _build(tmp_path, boto3_session)
    info = kms.create_key(description="via env")
    assert kms.client.meta.endpoint_url == moto_reset
    assert _admin(moto_reset).describe_key(KeyId=info.key_id)["KeyMetadata"]["Description"] == (
        "via env"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", "http://127.0.0.1:9")  # nothing listens there
    fresh = boto3.session.Session(aws_access_key_id="t", aws_secret_access_key="t")
    assert _build(tmp_path, fresh, endpoint_url=moto_reset).describe_key(info.key_id) == info


def test_no_session_or_credentials_until_the_first_call(
    tmp_path: Path, moto_reset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []
    real = boto3.session.Session

    def counting() -> Any:
        made.append(real())
        return made[-1]

    monkeypatch.setattr(boto3.session, "Session", counting)
    kms = _build(tmp_path, None, endpoint_url=moto_reset, sts_endpoint_url=moto_reset)
    assert made == []
    # Credentials that appear after construction are the ones used: nothing was captured.
    sts = real(region_name="us-east-1").client("sts", endpoint_url=moto_reset)
    role = "arn:aws:iam::123456789012:role/enclave-instance"
    creds = sts.assume_role(RoleArn=role, RoleSessionName="i-0abc")["Credentials"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", creds["SessionToken"])
    assert kms.caller_arn() == role
    assert len(made) == 1


class _Expiring(CredentialProvider):
    """Credentials that are always about to expire, each fetch with a new access key."""

    METHOD = "test-expiring"
    CANONICAL_NAME = "TestExpiring"

    def __init__(self) -> None:
        self.fetched: list[str] = []

    def fetch(self) -> dict[str, str]:
        self.fetched.append(f"ASIATEST{len(self.fetched):08d}")
        expiry = datetime.now(UTC) + timedelta(minutes=2)  # inside botocore's refresh window
        return {
            "access_key": self.fetched[-1],
            "secret_key": "secret",
            "token": "token",
            "expiry_time": expiry.isoformat(),
        }

    def load(self) -> RefreshableCredentials:
        return RefreshableCredentials.create_from_metadata(self.fetch(), self.fetch, self.METHOD)


def test_refreshing_credentials_keep_refreshing(tmp_path: Path, moto_reset: str) -> None:
    provider = _Expiring()
    core = botocore.session.Session()
    core.get_component("credential_provider").insert_before("env", provider)
    session = boto3.session.Session(botocore_session=core, region_name="us-east-1")
    signed: list[str] = []
    session.events.register(
        "before-send.kms",
        lambda request, **_: signed.append(request.headers["Authorization"].decode()),
    )
    kms = _build(tmp_path, session, endpoint_url=moto_reset)
    assert provider.fetched == []
    key = kms.create_key().key_id
    blob = kms.encrypt(key, SECRET, CONTEXT)
    assert kms.decrypt(key, blob, CONTEXT).plaintext == SECRET
    assert len(signed) == 3
    used = [h.split("Credential=", 1)[1].split("/", 1)[0] for h in signed]
    assert len(set(used)) == 3 and set(used) <= set(provider.fetched)


# --------------------------------------------------------------------------- keys and policies


def test_create_describe_and_key_policies(moto_kms: AwsKms) -> None:
    sent: list[bool] = []
    moto_kms.client.meta.events.register(
        "before-parameter-build.kms.PutKeyPolicy",
        lambda params, **_: sent.append(params["BypassPolicyLockoutSafetyCheck"]),
    )
    info = moto_kms.create_key(description="hello key", policy=POLICY)
    assert info.state == "Enabled" and info.description == "hello key"
    assert info.arn == f"arn:aws:kms:us-east-1:123456789012:key/{info.key_id}"
    assert moto_kms.describe_key(info.key_id) == moto_kms.describe_key(info.arn) == info
    assert moto_kms.get_key_policy(info.key_id) == POLICY
    locked = json.loads(json.dumps(POLICY))
    locked["Statement"][0]["Sid"] = "locked"
    moto_kms.put_key_policy(info.key_id, locked)
    assert moto_kms.get_key_policy(info.key_id) == locked
    moto_kms.put_key_policy(info.arn, POLICY, bypass_lockout_safety_check=True)
    assert moto_kms.get_key_policy(info.key_id) == POLICY
    assert sent == [False, True]
    default = moto_kms.create_key()
    assert default.description == ""
    assert moto_kms.get_key_policy(default.key_id)["Statement"]


def test_create_key_sends_the_policy_and_the_bypass_in_the_one_call(
    raw_kms: AwsKms, moto_kms: AwsKms
) -> None:
    """What migration step 2 relies on: moto (without the shim) takes ``Policy`` and
    ``BypassPolicyLockoutSafetyCheck`` on CreateKey and GetKeyPolicy returns that policy; no
    PutKeyPolicy is sent."""
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    locked = render_policy(
        EnclaveKeyPolicy(principal=MOTO_PRINCIPAL, pcr0="5e" * 48, app="hello", export_until=until)
    )
    for backend in (raw_kms, moto_kms):
        sent: list[tuple[str, dict[str, Any]]] = []
        for operation in ("CreateKey", "PutKeyPolicy"):
            backend.client.meta.events.register(
                f"before-parameter-build.kms.{operation}",
                lambda params, _op=operation, _sent=sent, **_: _sent.append((_op, dict(params))),
            )
        info = backend.create_key(
            description="migration target", policy=locked, bypass_lockout_safety_check=True
        )
        [(operation, params)] = sent
        assert operation == "CreateKey"
        assert json.loads(params["Policy"]) == locked
        assert params["BypassPolicyLockoutSafetyCheck"] is True
        assert (params["KeySpec"], params["KeyUsage"]) == ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
        assert "MultiRegion" not in params and "Origin" not in params  # single-Region, AWS_KMS
        assert info.state == "Enabled" and info.description == "migration target"
        assert backend.get_key_policy(info.key_id) == locked
        stored = _admin(str(backend.client.meta.endpoint_url)).get_key_policy(
            KeyId=info.key_id, PolicyName="default"
        )
        assert json.loads(stored["Policy"]) == locked
    # With the shim (KMS's lockout safety check), the same policy without the bypass is refused.
    with pytest.raises(ValidationError, match="MalformedPolicyDocumentException"):
        moto_kms.create_key(policy=locked)


def test_unknown_key_is_not_found(moto_kms: AwsKms) -> None:
    missing = str(uuid.uuid4())
    for call in (
        lambda: moto_kms.describe_key(missing),
        lambda: moto_kms.get_key_policy(missing),
        lambda: moto_kms.encrypt(missing, SECRET, CONTEXT),
        lambda: moto_kms.generate_data_key(missing, CONTEXT),
    ):
        with pytest.raises(NotFound) as info:
            call()
        assert type(info.value) is NotFound and missing in str(info.value)
        assert not _leaks(info.value, SECRET)


def test_schedule_key_deletion(moto_kms: AwsKms) -> None:
    key = moto_kms.create_key().key_id
    blob = moto_kms.encrypt(key, SECRET, CONTEXT)
    for days in (6, 31):
        with pytest.raises(ValidationError):
            moto_kms.schedule_key_deletion(key, days)
    assert moto_kms.describe_key(key).state == "Enabled"
    info = moto_kms.schedule_key_deletion(key, 7)
    assert info.state == "PendingDeletion" and info.deletion_date is not None
    when = datetime.fromisoformat(info.deletion_date)
    assert abs(when - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=5)
    for call in (
        lambda: moto_kms.decrypt(key, blob, CONTEXT),
        lambda: moto_kms.decrypt("", blob, CONTEXT),
        lambda: moto_kms.encrypt(key, SECRET, CONTEXT),
        lambda: moto_kms.generate_data_key(key, CONTEXT),
    ):
        with pytest.raises(InvalidKeyState) as error:
            call()
        assert str(error.value).startswith("KMS ")
        assert key in str(error.value) and not _leaks(error.value, SECRET, blob)


def test_disabled_key_is_invalid_state_until_enabled(moto_kms: AwsKms, moto_reset: str) -> None:
    key = moto_kms.create_key().key_id
    blob = moto_kms.encrypt(key, SECRET, CONTEXT)
    _admin(moto_reset).disable_key(KeyId=key)
    assert moto_kms.describe_key(key).state == "Disabled"
    with pytest.raises(InvalidKeyState) as error:
        moto_kms.decrypt(key, blob, CONTEXT)
    assert f"KMS Decrypt of key {key} failed: DisabledException" in str(error.value)
    assert not _leaks(error.value, SECRET, blob)
    with pytest.raises(InvalidKeyState):
        moto_kms.encrypt(key, SECRET, CONTEXT)
    _admin(moto_reset).enable_key(KeyId=key)
    assert moto_kms.decrypt(key, blob, CONTEXT).plaintext == SECRET


# --------------------------------------------------------------------------- key kinds and grants

STORE = "cks-1234567890abcdef0"
OTHER = "arn:aws:iam::123456789012:role/other"
NOBODY: dict[str, Any] = {  # a policy that allows moto's caller nothing
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "other",
            "Effect": "Allow",
            "Principal": {"AWS": OTHER},
            "Action": "kms:*",
            "Resource": "*",
        }
    ],
}


def _sent(backend: AwsKms, operation: str) -> list[dict[str, Any]]:
    """The parameters of every ``operation`` the backend sends from now on."""
    sent: list[dict[str, Any]] = []
    backend.client.meta.events.register(
        f"before-parameter-build.kms.{operation}",
        lambda params, **_: sent.append(dict(params)),
    )
    return sent


def test_describe_reports_the_kind_of_key(moto_kms: AwsKms, raw_kms: AwsKms) -> None:
    info = moto_kms.describe_key(moto_kms.create_key().key_id)
    assert (info.origin, info.multi_region, info.custom_key_store_id) == ("AWS_KMS", False, None)
    assert (info.key_spec, info.key_usage, info.key_manager) == (
        "SYMMETRIC_DEFAULT",
        "ENCRYPT_DECRYPT",
        "CUSTOMER",
    )
    # moto alone leaves MultiRegion out: the backend then says None ("not said"), never False.
    assert raw_kms.describe_key(raw_kms.create_key().key_id).multi_region is None
    multi = moto_kms.create_key(multi_region=True)
    assert multi.key_id.startswith("mrk-") and moto_kms.describe_key(multi.arn).multi_region is True
    external = moto_kms.create_key(origin="EXTERNAL")
    assert (external.origin, moto_kms.describe_key(external.key_id).state) == (
        "EXTERNAL",
        "PendingImport",
    )
    sent = _sent(moto_kms, "CreateKey")
    stored = moto_kms.create_key(custom_key_store_id=STORE)
    assert sent[0]["CustomKeyStoreId"] == STORE and "Origin" not in sent[0]
    described = moto_kms.describe_key(stored.key_id)
    assert (described.origin, described.custom_key_store_id) == ("AWS_CLOUDHSM", STORE)


def test_describe_fills_every_field_from_key_metadata(raw_kms: AwsKms) -> None:
    meta = {
        "KeyId": "1234abcd-12ab-34cd-56ef-1234567890ab",
        "Arn": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "KeyState": "Enabled",
        "Origin": "EXTERNAL_KEY_STORE",
        "MultiRegion": False,
        "CustomKeyStoreId": STORE,
        "KeySpec": "SYMMETRIC_DEFAULT",
        "KeyUsage": "ENCRYPT_DECRYPT",
        "KeyManager": "AWS",
    }
    with Stubber(raw_kms.client) as stub:
        stub.add_response("describe_key", {"KeyMetadata": meta}, {"KeyId": meta["KeyId"]})
        info = raw_kms.describe_key(meta["KeyId"])
    assert (info.origin, info.multi_region, info.custom_key_store_id) == (
        "EXTERNAL_KEY_STORE",
        False,
        STORE,
    )
    assert (info.key_spec, info.key_usage, info.key_manager) == (
        "SYMMETRIC_DEFAULT",
        "ENCRYPT_DECRYPT",
        "AWS",
    )


def test_create_list_retire_and_revoke_grants(moto_kms: AwsKms, raw_kms: AwsKms) -> None:
    for backend in (moto_kms, raw_kms):
        info = backend.create_key()
        assert backend.list_grants(info.key_id) == []
        grant_id = backend.create_grant(
            info.key_id,
            grantee_principal=OTHER,
            operations=["Decrypt", "GenerateDataKey"],
            retiring_principal=MOTO_PRINCIPAL,
            name="backdoor",
            constraints={"EncryptionContextSubset": {"app": "hello"}},
        )
        plain = backend.create_grant(info.arn, grantee_principal=OTHER, operations=["Encrypt"])
        grants = {g.grant_id: g for g in backend.list_grants(info.key_id)}
        assert grants[grant_id] == GrantInfo(
            grant_id=grant_id,
            key_id=info.key_id,  # moto names the key by id (KMS: by ARN)
            grantee_principal=OTHER,
            operations=("Decrypt", "GenerateDataKey"),
            retiring_principal=MOTO_PRINCIPAL,
            name="backdoor",
            encryption_context_subset={"app": "hello"},
        )
        assert grants[plain].operations == ("Encrypt",) and grants[plain].name == ""
        assert grants[plain].retiring_principal is None
        retired = _sent(backend, "RetireGrant")
        backend.retire_grant(info.key_id, grant_id)  # a key id: sent as the key's ARN
        assert retired == [{"KeyId": info.arn, "GrantId": grant_id}]
        backend.revoke_grant(info.key_id, plain)
        assert backend.list_grants(info.key_id) == []
        with pytest.raises(NotFound, match=f"KMS RevokeGrant of key {info.key_id}"):
            backend.revoke_grant(info.key_id, plain)


def test_list_grants_follows_every_page(raw_kms: AwsKms) -> None:
    """moto answers ListGrants with every grant and ``Truncated: false``, ignoring ``Limit``
    and ``Marker``, so the pages KMS sends are stubbed here."""
    key = "1234abcd-12ab-34cd-56ef-1234567890ab"

    def entry(n: int) -> dict[str, Any]:
        return {
            "KeyId": key,
            "GrantId": f"g{n}",
            "GranteePrincipal": OTHER,
            "Operations": ["Decrypt"],
        }

    with Stubber(raw_kms.client) as stub:
        stub.add_response(
            "list_grants",
            {"Grants": [entry(1), entry(2)], "Truncated": True, "NextMarker": "m1"},
            {"KeyId": key},
        )
        stub.add_response(
            "list_grants",
            {"Grants": [entry(3)], "Truncated": False},
            {"KeyId": key, "Marker": "m1"},
        )
        grants = raw_kms.list_grants(key)
        stub.assert_no_pending_responses()
    assert [g.grant_id for g in grants] == ["g1", "g2", "g3"]


def test_a_grant_outlives_a_policy_change_through_the_shim(
    moto_kms: AwsKms, moto_reset: str
) -> None:
    """With moto's grants honoured as KMS honours them (the shim), a grant made while the policy
    was open survives a PutKeyPolicy that names the caller nowhere; an explicit Deny beats it."""
    info = moto_kms.create_key()
    blob = moto_kms.encrypt(info.key_id, SECRET, CONTEXT)
    moto_kms.create_grant(info.key_id, grantee_principal=MOTO_PRINCIPAL, operations=["Decrypt"])
    moto_kms.put_key_policy(info.key_id, NOBODY, bypass_lockout_safety_check=True)
    assert moto_kms.decrypt(info.key_id, blob, CONTEXT).plaintext == SECRET
    for call in (
        lambda: moto_kms.encrypt(info.key_id, SECRET, CONTEXT),
        lambda: moto_kms.list_grants(info.key_id),
        lambda: moto_kms.describe_key(info.key_id),
    ):
        with pytest.raises(AccessDenied):
            call()
    # The policy can no longer be changed by the caller; moto's own client changes it.
    denying = json.loads(json.dumps(NOBODY))
    denying["Statement"].append(
        {
            "Sid": "NoDecrypt",
            "Effect": "Deny",
            "Principal": {"AWS": MOTO_PRINCIPAL},
            "Action": "kms:Decrypt",
            "Resource": "*",
        }
    )
    _admin(moto_reset).put_key_policy(
        KeyId=info.key_id, PolicyName="default", Policy=json.dumps(denying)
    )
    with pytest.raises(AccessDenied) as denied:
        moto_kms.decrypt(info.key_id, blob, CONTEXT)
    assert "explicitly denied by statement 'NoDecrypt'" in str(denied.value)


def test_policy_text_goes_out_as_given_and_duplicates_are_refused(
    moto_kms: AwsKms, raw_kms: AwsKms, moto_reset: str
) -> None:
    text = json.dumps(POLICY, indent=1)
    created = _sent(moto_kms, "CreateKey")
    put = _sent(moto_kms, "PutKeyPolicy")
    info = moto_kms.create_key(policy=text)
    moto_kms.put_key_policy(info.key_id, text)
    moto_kms.put_key_policy(info.key_id, POLICY)
    assert created[0]["Policy"] == text and put[0]["Policy"] == text
    assert put[1]["Policy"] == json.dumps(POLICY)
    assert moto_kms.get_key_policy(info.key_id) == POLICY
    # moto stores a policy with a duplicate key as given; reading it back is an error, not
    # whichever "Effect" came last.
    duplicated = text.replace('"Effect": "Allow"', '"Effect": "Deny", "Effect": "Allow"')
    assert duplicated != text
    _admin(moto_reset).put_key_policy(KeyId=info.key_id, PolicyName="default", Policy=duplicated)
    with pytest.raises(ValidationError) as raised:
        raw_kms.get_key_policy(info.key_id)
    assert str(raised.value) == (
        f"KMS GetKeyPolicy of key {info.key_id}: key policy: duplicate key 'Effect' in one object"
    )
    # Sent through KMS (here the shim), such a document is a MalformedPolicyDocumentException.
    with pytest.raises(ValidationError, match="MalformedPolicyDocumentException"):
        moto_kms.create_key(policy=duplicated)
    with pytest.raises(ValidationError, match="MalformedPolicyDocumentException"):
        moto_kms.put_key_policy(moto_kms.create_key().key_id, duplicated)


# --------------------------------------------------------------------------- cryptography


def test_encrypt_decrypt_with_encryption_context(moto_kms: AwsKms) -> None:
    info = moto_kms.create_key()
    blob = moto_kms.encrypt(info.key_id, SECRET, CONTEXT)
    assert SECRET not in blob
    result = moto_kms.decrypt(info.key_id, blob, CONTEXT)
    assert (result.plaintext, result.key_id, result.ciphertext_for_recipient) == (
        SECRET,
        info.arn,
        None,
    )
    assert moto_kms.decrypt("", blob, CONTEXT).plaintext == SECRET  # the key comes from the blob
    for wrong in ({**CONTEXT, "purpose": "static-secret"}, {}):
        with pytest.raises(CryptoError) as error:
            moto_kms.decrypt(info.key_id, blob, wrong)
        assert info.key_id in str(error.value) and not _leaks(error.value, SECRET, blob)
    with pytest.raises(CryptoError):
        moto_kms.decrypt(info.key_id, blob[:-1] + bytes([blob[-1] ^ 1]), CONTEXT)
    for size in (0, 4097):
        with pytest.raises(ValidationError):
            moto_kms.encrypt(info.key_id, b"x" * size, CONTEXT)


@pytest.mark.parametrize("size", [1, 32, 1024])
def test_generate_data_key_sizes(moto_kms: AwsKms, size: int) -> None:
    info = moto_kms.create_key()
    result = moto_kms.generate_data_key(info.key_id, CONTEXT, number_of_bytes=size)
    assert result.plaintext is not None and len(result.plaintext) == size
    assert result.key_id == info.arn and result.ciphertext_blob
    assert (
        moto_kms.decrypt(info.key_id, result.ciphertext_blob, CONTEXT).plaintext == result.plaintext
    )


def test_generate_data_key_size_limits(moto_kms: AwsKms) -> None:
    key = moto_kms.create_key().key_id
    for size in (0, 1025):
        with pytest.raises(ValidationError):
            moto_kms.generate_data_key(key, CONTEXT, number_of_bytes=size)


def test_recipient_round_trip_through_the_shim(
    moto_kms: AwsKms, shim: KmsRecipientShim, nsm_root: tuple[SimulatedNsm, Any]
) -> None:
    nsm = nsm_root[0]
    key = moto_kms.create_key().key_id
    blob = moto_kms.encrypt(key, SECRET, CONTEXT)
    recipient, private = _enclave_recipient(nsm)
    result = moto_kms.decrypt(key, blob, CONTEXT, recipient)
    assert result.plaintext is None and result.ciphertext_for_recipient
    assert SECRET not in result.ciphertext_for_recipient
    assert open_ciphertext_for_recipient(result.ciphertext_for_recipient, private) == SECRET
    generated = moto_kms.generate_data_key(key, CONTEXT, number_of_bytes=32, recipient=recipient)
    assert generated.plaintext is None and generated.ciphertext_blob
    assert generated.ciphertext_for_recipient is not None
    data_key = open_ciphertext_for_recipient(generated.ciphertext_for_recipient, private)
    assert len(data_key) == 32
    assert moto_kms.decrypt(key, generated.ciphertext_blob, CONTEXT).plaintext == data_key
    assert [d.module_id for d in shim.verified] == [nsm.module_id, nsm.module_id]
    assert shim.verified[0].pcrs[0] == b"\x07" * 48
    # another enclave's key cannot open it
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CryptoError):
        open_ciphertext_for_recipient(result.ciphertext_for_recipient, other)


def test_recipient_documents_the_shim_refuses(
    moto_kms: AwsKms, tmp_path: Path, nsm_root: tuple[SimulatedNsm, Any]
) -> None:
    key = moto_kms.create_key().key_id
    blob = moto_kms.encrypt(key, SECRET, CONTEXT)
    (tmp_path / "other-app").mkdir()
    stranger = SimulatedNsm(state_dir=tmp_path / "other", app_dir=tmp_path / "other-app")
    foreign, _ = _enclave_recipient(stranger)  # signed under another dev root
    keyless = Recipient(attestation_document=nsm_root[0].attestation())
    wrong_alg = Recipient(foreign.attestation_document, key_encryption_algorithm="RSAES_PKCS1")
    with pytest.raises(AccessDenied) as denied:
        moto_kms.decrypt(key, blob, CONTEXT, foreign)
    assert "attestation document is invalid" in str(denied.value)
    for recipient in (keyless, wrong_alg):
        with pytest.raises(ValidationError) as error:
            moto_kms.decrypt(key, blob, CONTEXT, recipient)
        assert "ValidationException" in str(error.value) and not _leaks(error.value, SECRET)


def test_key_locked_to_pcr0_decrypts_only_for_that_image(
    moto_kms: AwsKms, tmp_path: Path, nsm_root: tuple[SimulatedNsm, Any]
) -> None:
    assert moto_kms.caller_arn() == MOTO_PRINCIPAL
    policy = locked_policy(pcr0_hex=(b"\x07" * 48).hex(), principal_arn=moto_kms.caller_arn())
    with pytest.raises(ValidationError) as lockout:
        moto_kms.create_key(policy=policy)
    assert "MalformedPolicyDocumentException" in str(lockout.value)
    key = moto_kms.create_key().key_id
    blob = moto_kms.encrypt(key, SECRET, CONTEXT)
    with pytest.raises(ValidationError):
        moto_kms.put_key_policy(key, policy)  # the lockout safety check
    assert moto_kms.get_key_policy(key)["Statement"][0]["Principal"] != {"AWS": MOTO_PRINCIPAL}
    moto_kms.put_key_policy(key, policy, bypass_lockout_safety_check=True)
    assert moto_kms.get_key_policy(key) == policy
    recipient, private = _enclave_recipient(nsm_root[0])
    result = moto_kms.decrypt(key, blob, CONTEXT, recipient)
    assert result.ciphertext_for_recipient is not None
    assert open_ciphertext_for_recipient(result.ciphertext_for_recipient, private) == SECRET
    other_image = SimulatedNsm(
        state_dir=tmp_path / ".enclave", app_dir=tmp_path / "app", pcr0=b"\x08" * 48
    )
    for call in (
        lambda: moto_kms.decrypt(key, blob, CONTEXT),  # no attestation at all
        lambda: moto_kms.decrypt(key, blob, CONTEXT, _enclave_recipient(other_image)[0]),
        lambda: moto_kms.generate_data_key(key, CONTEXT),
        lambda: moto_kms.encrypt(key, SECRET, CONTEXT),  # the locked policy has no Encrypt
        lambda: moto_kms.put_key_policy(key, POLICY, bypass_lockout_safety_check=True),
    ):
        with pytest.raises(AccessDenied) as denied:
            call()
        assert type(denied.value) is AccessDenied and key in str(denied.value)
        assert not _leaks(denied.value, SECRET, blob)
    bypassed = moto_kms.create_key(policy=policy, bypass_lockout_safety_check=True)
    assert moto_kms.get_key_policy(bypassed.key_id) == policy


def test_an_endpoint_ignoring_recipient_is_refused(
    raw_kms: AwsKms, nsm_root: tuple[SimulatedNsm, Any]
) -> None:
    key = raw_kms.create_key().key_id
    blob = raw_kms.encrypt(key, SECRET, CONTEXT)
    recipient, _ = _enclave_recipient(nsm_root[0])
    for call in (
        lambda: raw_kms.decrypt(key, blob, CONTEXT, recipient),
        lambda: raw_kms.generate_data_key(key, CONTEXT, recipient=recipient),
    ):
        with pytest.raises(BackendError) as error:
            call()
        assert "carries a plaintext" in str(error.value) and not _leaks(error.value, SECRET)


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    ("arn", "principal"),
    [
        (
            "arn:aws:sts::123456789012:assumed-role/enclave-role/i-0abc",
            "arn:aws:iam::123456789012:role/enclave-role",
        ),
        (
            "arn:aws-us-gov:sts::123456789012:assumed-role/R/s",
            "arn:aws-us-gov:iam::123456789012:role/R",
        ),
        ("arn:aws:iam::123456789012:role/path/R", "arn:aws:iam::123456789012:role/path/R"),
        ("arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123456789012:user/alice"),
        ("arn:aws:sts::123456789012:user/moto", "arn:aws:iam::123456789012:user/moto"),
        ("arn:aws:iam::123456789012:root", "arn:aws:iam::123456789012:root"),
    ],
)
def test_principal_arn(arn: str, principal: str) -> None:
    assert principal_arn(arn) == principal


def test_principal_arn_refuses_what_is_not_a_principal() -> None:
    for bad in ("", "arn:aws:s3:::bucket", "arn:aws:sts::123456789012:assumed-role/R"):
        with pytest.raises(BackendError):
            principal_arn(bad)


def test_caller_arn_from_sts_is_cached(tmp_path: Path, moto_reset: str) -> None:
    sts = boto3.session.Session(region_name="us-east-1").client("sts", endpoint_url=moto_reset)
    role = "arn:aws:iam::123456789012:role/enclave-role"
    creds = sts.assume_role(RoleArn=role, RoleSessionName="i-0abc-enc01")["Credentials"]
    session = boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name="us-east-1",
    )
    calls: list[str] = []
    session.events.register("before-send.sts", lambda request, **_: calls.append(request.url))
    kms = _build(tmp_path, session, sts_endpoint_url=moto_reset)
    assert kms.caller_arn() == role
    assert kms.caller_arn() == role
    assert len(calls) == 1


# --------------------------------------------------------------------------- AWS error codes


class _Canned(ThreadingHTTPServer):
    """Answers every request with one fixed JSON error, counting requests."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CannedHandler)
        self.answer: tuple[int, dict[str, str]] = (500, {})
        self.hits = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CannedHandler(BaseHTTPRequestHandler):
    server: _Canned

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.hits += 1
        status, body = self.server.answer
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[_Canned]:
    server = _Canned()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("AccessDeniedException", AccessDenied),
        ("KMSInvalidStateException", InvalidKeyState),
        ("DisabledException", InvalidKeyState),
        ("NotFoundException", NotFound),
        ("InvalidCiphertextException", CryptoError),
        ("IncorrectKeyException", CryptoError),
        ("MalformedPolicyDocumentException", ValidationError),
        ("ValidationException", ValidationError),
        ("KMSInternalExceptionX", BackendError),
    ],
)
def test_aws_error_codes_map_to_distinct_project_errors(
    tmp_path: Path, canned: _Canned, boto3_session: Any, code: str, expected: type[EnclaveError]
) -> None:
    canned.answer = (400, {"__type": code, "message": f"{SECRET.decode()} was refused"})
    kms = _build(tmp_path, boto3_session, endpoint_url=canned.url, max_attempts=1)
    with pytest.raises(EnclaveError) as error:
        kms.decrypt("1234abcd-12ab-34cd-56ef-1234567890ab", SECRET, CONTEXT)
    assert type(error.value) is expected
    message = str(error.value)
    assert message.startswith("KMS Decrypt of key 1234abcd-12ab-34cd-56ef-1234567890ab")
    assert code in message and not _leaks(error.value, SECRET)


def test_throttling_is_retried_then_a_backend_error(
    tmp_path: Path, canned: _Canned, boto3_session: Any
) -> None:
    canned.answer = (400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
    kms = _build(tmp_path, boto3_session, endpoint_url=canned.url, max_attempts=2)
    with pytest.raises(BackendError) as error:
        kms.describe_key("alias/enclave")
    assert type(error.value) is BackendError
    assert "throttled" in str(error.value) and "alias/enclave" in str(error.value)
    assert canned.hits == 2


def test_unreachable_endpoint_is_a_backend_error(tmp_path: Path, boto3_session: Any) -> None:
    kms = _build(
        tmp_path,
        boto3_session,
        endpoint_url="http://127.0.0.1:9",
        max_attempts=1,
        connect_timeout_s=1,
    )
    with pytest.raises(BackendError) as error:
        kms.encrypt("k", SECRET, CONTEXT)
    assert "could not reach" in str(error.value) and not _leaks(error.value, SECRET)
