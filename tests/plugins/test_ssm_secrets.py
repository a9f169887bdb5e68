"""Tests for the ``ssm`` secrets backend, over HTTP against this session's moto server.

Every request goes to moto through boto3. What moto does not do as SSM does (refusing to
downgrade an Advanced parameter, error messages quoting the request) is supplied by a botocore
``before-call`` handler that answers in SSM's place, without any HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import marshmallow
import pytest
from botocore.awsrequest import AWSResponse
from enclave_plugins.ssm_secrets import SsmSecrets

from enclave_core.config import Config
from enclave_core.errors import AccessDenied, BackendError, ValidationError
from enclave_core.metrics import Metrics
from enclave_core.plugin.backends import build_backend, plugins_for, validate_backends
from enclave_core.plugin.interfaces import BackendContext, Secrets
from enclave_core.plugin.manager import get_plugin_manager
from enclave_core.runtime.instrumented import CountingSecrets
from tests.helpers import backend_context

BASE = "/dev/hello/"
ATTESTATION_SIZE = 5 * 1024  # an attestation document is about 5 KB


def _context(tmp_path: Path, session: Any) -> BackendContext:
    return backend_context(tmp_path, session=session)


def _build(tmp_path: Path, session: Any, **options: Any) -> SsmSecrets:
    loaded = SsmSecrets.Options().load(options)
    return SsmSecrets.from_options(loaded, _context(tmp_path, session))


@pytest.fixture
def admin(moto_reset: str, boto3_session: Any) -> Any:
    """A plain boto3 SSM client on moto."""
    return boto3_session.client("ssm", endpoint_url=moto_reset)


@pytest.fixture
def secrets(tmp_path: Path, moto_reset: str, boto3_session: Any) -> SsmSecrets:
    return _build(tmp_path, boto3_session, endpoint_url=moto_reset)


def _described(admin: Any, full: str) -> dict[str, Any]:
    found = admin.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [full]}])
    (parameter,) = found["Parameters"]
    return dict(parameter)


def _answer_instead(
    client: Any, code: str, message: str, when: Callable[[dict[str, Any]], bool] = lambda p: True
) -> list[dict[str, Any]]:
    """Make PutParameter answer an SSM error when ``when(params)``; return the refused calls."""
    refused: list[dict[str, Any]] = []

    def answer(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        body = json.loads(params["body"])  # the JSON request SSM would receive
        if not when(body):
            return None  # on to moto
        refused.append(body)
        parsed = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {}}
        return AWSResponse("https://ssm.example", 400, {}, None), parsed

    client.meta.events.register("before-call.ssm.PutParameter", answer)
    return refused


# --------------------------------------------------------------------------- registration, config


def test_hook_enclave_register_secrets_ssm() -> None:
    plugins = get_plugin_manager()
    assert plugins.secrets.get("ssm") is SsmSecrets
    assert plugins.secrets.owner("ssm") == "ssm-secrets"


def test_options_and_client_config(tmp_path: Path, boto3_session: Any) -> None:
    with pytest.raises(marshmallow.ValidationError, match="Unknown field"):
        SsmSecrets.Options().load({"bucket": "x"})
    with pytest.raises(marshmallow.ValidationError, match="tier"):
        SsmSecrets.Options().load({"tier": "Premium"})
    with pytest.raises(marshmallow.ValidationError, match="page_size"):
        SsmSecrets.Options().load({"page_size": 11})  # GetParametersByPath's maximum is 10
    defaults = SsmSecrets.Options().load({})
    assert (defaults["tier"], defaults["kms_key_id"], defaults["page_size"]) == ("auto", None, 10)
    timeouts = {"connect_timeout_s": 2, "read_timeout_s": 7, "max_attempts": 3}
    secrets = _build(tmp_path, boto3_session, region="eu-west-2", **timeouts)
    typed: Secrets = secrets  # the Protocol, statically (mypy) and at run time
    assert isinstance(typed, Secrets)
    assert secrets.base == BASE
    config = secrets.client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert (config.connect_timeout, config.read_timeout) == (2.0, 7.0)
    assert secrets.client.meta.region_name == "eu-west-2"
    assert secrets.client.meta.endpoint_url == "https://ssm.eu-west-2.amazonaws.com"


def test_built_from_enclave_yaml(
    make_config: Callable[..., Config], moto_reset: str, admin: Any
) -> None:
    config = make_config(secrets={"backend": "ssm", "options": {"endpoint_url": moto_reset}})
    secrets = build_backend(config, plugins_for(config), "secrets")
    assert isinstance(secrets, SsmSecrets)
    secrets.put("KMSKeyID", "1234abcd-12ab-34cd-56ef-1234567890ab")
    value = admin.get_parameter(Name=f"/{config.prefix}/{config.name}/KMSKeyID")["Parameter"]
    assert value["Value"] == "1234abcd-12ab-34cd-56ef-1234567890ab"
    typo = make_config(secrets={"backend": "ssm", "options": {"teir": "Advanced"}})
    problems = validate_backends(typo, plugins_for(typo))
    assert any(line.startswith("secrets.options.teir") for line in problems)


def test_endpoint_env_var_is_honoured_and_option_wins(
    tmp_path: Path, moto_reset: str, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", moto_reset)
    secrets = _build(tmp_path, boto3.session.Session(region_name="us-east-1"))
    secrets.put("KMSKeyID", "via-env")
    assert secrets.client.meta.endpoint_url == moto_reset
    assert admin.get_parameter(Name=BASE + "KMSKeyID")["Parameter"]["Value"] == "via-env"
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9")  # nothing listens there
    other = boto3.session.Session(region_name="us-east-1")
    assert _build(tmp_path, other, endpoint_url=moto_reset).get("KMSKeyID") == "via-env"


# --------------------------------------------------------------------------- Secrets operations


def test_get_put_overwrite_delete(secrets: SsmSecrets, admin: Any) -> None:
    assert secrets.get("signing_key/Ciphertext") is None
    secrets.put("signing_key/Ciphertext", "AQIDBAUG")
    assert secrets.get("signing_key/Ciphertext") == "AQIDBAUG"
    described = _described(admin, BASE + "signing_key/Ciphertext")
    assert (described["Type"], described["Tier"]) == ("String", "Standard")
    secrets.put("signing_key/Ciphertext", "BwgJCgsM")
    assert secrets.get("signing_key/Ciphertext") == "BwgJCgsM"
    assert admin.get_parameter(Name=BASE + "signing_key/Ciphertext")["Parameter"]["Version"] == 2
    assert secrets.delete("signing_key/Ciphertext") is True
    assert secrets.delete("signing_key/Ciphertext") is False
    assert secrets.get("signing_key/Ciphertext") is None


def test_kms_key_id_makes_secure_strings(
    tmp_path: Path, moto_reset: str, boto3_session: Any, admin: Any
) -> None:
    key = boto3_session.client("kms", endpoint_url=moto_reset).create_key()["KeyMetadata"]
    secrets = _build(tmp_path, boto3_session, endpoint_url=moto_reset, kms_key_id=key["KeyId"])
    secrets.put("StorageDEK/Ciphertext", "c2VjcmV0")
    described = _described(admin, BASE + "StorageDEK/Ciphertext")
    assert (described["Type"], described["KeyId"]) == ("SecureString", key["KeyId"])
    stored = admin.get_parameter(Name=BASE + "StorageDEK/Ciphertext")["Parameter"]["Value"]
    assert stored != "c2VjcmV0"  # encrypted at rest
    assert secrets.get("StorageDEK/Ciphertext") == "c2VjcmV0"
    assert secrets.list("StorageDEK") == ["StorageDEK/Ciphertext"]


def test_a_5_kb_value_uses_the_advanced_tier(secrets: SsmSecrets, admin: Any) -> None:
    document = "A" * ATTESTATION_SIZE
    secrets.put("MigrationPreviousPCR0Attestation", document)
    assert secrets.get("MigrationPreviousPCR0Attestation") == document
    assert _described(admin, BASE + "MigrationPreviousPCR0Attestation")["Tier"] == "Advanced"
    secrets.put("MigrationPreviousPCR0", "ab" * 48)  # 96 bytes
    assert _described(admin, BASE + "MigrationPreviousPCR0")["Tier"] == "Standard"
    secrets.put("edge", "e" * 4096)
    assert _described(admin, BASE + "edge")["Tier"] == "Standard"
    secrets.put("edge", "e" * 4097)
    assert _described(admin, BASE + "edge")["Tier"] == "Advanced"


def test_a_small_value_over_an_advanced_parameter_stays_advanced(
    secrets: SsmSecrets, admin: Any
) -> None:
    # SSM refuses to move an Advanced parameter back to Standard; moto does not, so the refusal
    # is played here for parameters moto holds as Advanced.
    def downgrade(params: dict[str, Any]) -> bool:
        if params.get("Tier") != "Standard":
            return False
        names = [p["Name"] for p in admin.describe_parameters()["Parameters"]]
        return params["Name"] in names and _described(admin, params["Name"])["Tier"] == "Advanced"

    refused = _answer_instead(
        secrets.client,
        "ValidationException",
        "This parameter uses the advanced-parameter tier. You can't downgrade a parameter from "
        "the advanced-parameter tier to the standard-parameter tier.",
        downgrade,
    )
    secrets.put("doc", "D" * ATTESTATION_SIZE)
    secrets.put("doc", "small now")
    assert secrets.get("doc") == "small now"
    assert _described(admin, BASE + "doc")["Tier"] == "Advanced"
    assert [(p["Name"], p["Tier"]) for p in refused] == [(BASE + "doc", "Standard")]
    secrets.put("fresh", "small")  # a new small parameter is simply Standard
    assert _described(admin, BASE + "fresh")["Tier"] == "Standard"


def test_explicit_tiers_and_size_limits(
    tmp_path: Path, moto_reset: str, boto3_session: Any, admin: Any, secrets: SsmSecrets
) -> None:
    too_big = "Z" * 8193
    with pytest.raises(ValidationError, match="over the 8192-byte limit") as raised:
        secrets.put("big", too_big)
    assert too_big not in str(raised.value)
    standard = _build(tmp_path, boto3_session, endpoint_url=moto_reset, tier="Standard")
    with pytest.raises(ValidationError, match="over the 4096-byte limit"):
        standard.put("doc", "S" * ATTESTATION_SIZE)
    advanced = _build(tmp_path, boto3_session, endpoint_url=moto_reset, tier="Advanced")
    advanced.put("tiny", "t")
    assert _described(admin, BASE + "tiny")["Tier"] == "Advanced"
    with pytest.raises(ValidationError, match="empty value"):
        secrets.put("empty", "")
    assert secrets.list() == ["tiny"]


def test_list_paginates_and_returns_sorted_relative_names(
    tmp_path: Path, moto_reset: str, boto3_session: Any, admin: Any
) -> None:
    secrets = _build(tmp_path, boto3_session, endpoint_url=moto_reset, page_size=5)
    names = ["KMSKeyID", "StorageDEK/Ciphertext", "Migration/Checkpoint"]
    names += [f"Migration/s{i}/Ciphertext" for i in range(5)]
    names += [f"s{i}/Ciphertext" for i in range(4)]
    assert len(names) == 12
    for name in reversed(names):
        secrets.put(name, "v")
    # neighbours that must not show: another app, an app whose name extends ours
    admin.put_parameter(Name="/dev/other/KMSKeyID", Value="x", Type="String")
    admin.put_parameter(Name="/dev/hello-two/KMSKeyID", Value="x", Type="String")
    pages: list[int] = []
    secrets.client.meta.events.register(
        "after-call.ssm.GetParametersByPath",
        lambda parsed, **_: pages.append(len(parsed.get("Parameters", []))),
    )
    assert secrets.list() == sorted(names)
    assert pages == [5, 5, 2]  # page_size=5 over 12 names: every page was read
    assert secrets.list("Migration/") == sorted(n for n in names if n.startswith("Migration/"))
    assert secrets.list("Migration/s3") == ["Migration/s3/Ciphertext"]
    assert secrets.list("s") == sorted(n for n in names if n.startswith("s"))
    assert secrets.list("nothing/") == []
    assert secrets.list("bad name/") == []


@pytest.mark.parametrize(
    "name", ["", "/abs", "a//b", "a/../b", "..", "trailing/", "sp ace", "ü", "x" * 1100]
)
def test_invalid_names_are_refused_before_any_call(secrets: SsmSecrets, name: str) -> None:
    calls: list[str] = []
    secrets.client.meta.events.register("before-send.ssm", lambda **_: calls.append("sent"))
    for call in (
        lambda: secrets.get(name),
        lambda: secrets.put(name, "v"),
        lambda: secrets.delete(name),
    ):
        with pytest.raises(ValidationError, match="invalid parameter name|too long"):
            call()
    assert calls == []


# --------------------------------------------------------------------------- errors


def test_errors_name_the_parameter_and_never_the_value(secrets: SsmSecrets) -> None:
    value = "c2VjcmV0LWNpcGhlcnRleHQtdmFsdWU="
    _answer_instead(
        secrets.client,
        "ValidationException",
        f"1 validation error detected: Value '{value}' at 'value' failed to satisfy constraint",
        lambda p: p["Name"].endswith("/quoted"),
    )
    with pytest.raises(ValidationError, match=f"PutParameter of parameter {BASE}quoted") as got:
        secrets.put("quoted", value)
    assert value not in str(got.value)
    assert "withheld" in str(got.value)
    _answer_instead(
        secrets.client,
        "AccessDeniedException",
        "not authorized to perform ssm:PutParameter",
        lambda p: p["Name"].endswith("/denied"),
    )
    with pytest.raises(AccessDenied, match="denied"):
        secrets.put("denied", value)


def test_runtime_counters_count_ssm_calls(
    tmp_path: Path, boto3_session: Any, secrets: SsmSecrets
) -> None:
    metrics = Metrics()
    counted = CountingSecrets(secrets, metrics)
    assert counted.get("KMSKeyID") is None
    counted.put("KMSKeyID", "k")
    counted.put("s/Ciphertext", "c")
    assert counted.get("KMSKeyID") == "k"
    assert counted.list() == ["KMSKeyID", "s/Ciphertext"]
    assert counted.delete("KMSKeyID") is True
    assert counted.delete("KMSKeyID") is False
    snapshot = metrics.snapshot()
    assert (snapshot["secret_reads"], snapshot["secret_writes"], snapshot["secret_deletes"]) == (
        3,
        2,
        2,
    )
    unreachable = _build(tmp_path, boto3_session, endpoint_url="http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(BackendError, match="could not reach the endpoint"):
        CountingSecrets(unreachable, metrics).get("KMSKeyID")
    # the README's counters have no secret error counter: the failed call is still a counted read.
    assert metrics.snapshot()["secret_reads"] == 4


def test_create_stores_only_when_absent(secrets: SsmSecrets, admin: Any) -> None:
    # PutParameter without Overwrite: SSM itself refuses the second write.
    assert secrets.create("signing_key/Ciphertext", "first") is True
    assert secrets.create("signing_key/Ciphertext", "second") is False
    assert secrets.get("signing_key/Ciphertext") == "first"
    assert admin.get_parameter(Name=BASE + "signing_key/Ciphertext")["Parameter"]["Version"] == 1


def test_create_of_a_large_value_uses_the_advanced_tier(secrets: SsmSecrets, admin: Any) -> None:
    assert secrets.create("big", "x" * ATTESTATION_SIZE) is True
    assert _described(admin, BASE + "big")["Tier"] == "Advanced"
    assert secrets.create("big", "y" * ATTESTATION_SIZE) is False
    assert secrets.get("big") == "x" * ATTESTATION_SIZE
