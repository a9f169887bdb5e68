"""End to end on the AWS backends: `enclave dev` with `s3` storage, `ssm` secrets and `aws` KMS.

The foundation scenario (tests/e2e/test_dev_stack.py) a second time, against this session's moto
server over HTTP. KMS and STS go through the KMS Recipient shim (tests/services/kms_shim_server.py),
which gives moto's KMS the Recipient flow, key policies and key states; it trusts the stack's
``.enclave/dev-root.pem``, written by the simulated NSM on its first use and read lazily. S3 and SSM
talk to moto directly. The runtime is a separate process: it inherits the fake credentials and
region the autouse ``_no_real_aws`` fixture puts in ``os.environ``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from enclave_core.kmspolicy.canonical import match_policy
from tests.e2e.stack import DevStack, http, make_stack, read_environ
from tests.helpers import wait_for
from tests.services.kms_recipient_shim import RECIPIENT_OPS
from tests.services.kms_shim_server import KmsShimServer

pytestmark = pytest.mark.e2e

BUCKET = "enclave-e2e-data"
PREFIX = "apps/hello"
PARAMS = "/dev/hello/"
MARKER = b"plaintext-marker-s3-4c7e21"
DYNAMIC_VALUE = "dynamic-secret-value-ssm-93"
BOOT_TIMEOUT_S = 60.0


@dataclass
class AwsStack:
    """A dev stack on the AWS backends, the shim in front of KMS, and clients reaching moto."""

    dev: DevStack
    shim: KmsShimServer
    s3: Any
    ssm: Any
    kms: Any


@pytest.fixture
def aws_stack(
    tmp_path: Path,
    moto_reset: str,
    kms_shim_endpoint: Callable[..., KmsShimServer],
    boto3_session: boto3.session.Session,
) -> Iterator[AwsStack]:
    folder = tmp_path / "hello"
    # The shim is stopped after the stack (fixture teardown runs in reverse order).
    shim = kms_shim_endpoint(folder / ".enclave" / "dev-root.pem")
    s3 = boto3_session.client("s3", endpoint_url=moto_reset)
    s3.create_bucket(Bucket=BUCKET)
    dev = make_stack(
        folder,
        mode="development",
        runtime={"tls": True},
        storage={
            "backend": "s3",
            "options": {"bucket": BUCKET, "prefix": PREFIX, "endpoint_url": moto_reset},
        },
        secrets={"backend": "ssm", "options": {"endpoint_url": moto_reset}},
        kms={"backend": "aws", "options": {"endpoint_url": shim.url, "sts_endpoint_url": shim.url}},
        attestation={"backend": "simulated"},
        launcher={"backend": "process"},
    )
    try:
        start(dev)
        yield AwsStack(
            dev=dev,
            shim=shim,
            s3=s3,
            ssm=boto3_session.client("ssm", endpoint_url=moto_reset),
            kms=boto3_session.client("kms", endpoint_url=moto_reset),
        )
    finally:
        dev.stop()
        dev.kill_leftovers()


def start(dev: DevStack) -> None:
    """Start `enclave dev`; on failure quote its output, which says which stage or call failed."""
    try:
        dev.start()  # the runtime inherits os.environ: fake credentials, us-east-1
    except AssertionError as exc:
        logs = [dev.stderr_path, dev.folder / ".enclave" / "logs" / "runtime.log"]
        tails = [f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in logs if p.exists()]
        raise AssertionError("\n".join([str(exc), *tails])) from exc


def auth(env: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['ENCLAVE_MGMT_TOKEN']}"}


def enclave_info(dev: DevStack) -> dict[str, Any]:
    status, _, body = http("GET", dev.ingress_url + "/v1/enclave-info")
    assert status == 200, body
    info: dict[str, Any] = json.loads(body)
    return info


def restart(dev: DevStack) -> None:
    """Stop the enclave through the supervisor and start it again (not waiting for readiness)."""
    assert dev.supervisor_post("/v1/stop")[0] == 200
    wait_for(lambda: dev.health()["status"] == "stopped")
    assert dev.supervisor_post("/v1/start")[0] == 200


def bucket_objects(stack: AwsStack) -> dict[str, bytes]:
    listed = stack.s3.list_objects_v2(Bucket=BUCKET)
    return {
        item["Key"]: stack.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        for item in listed.get("Contents", [])
    }


def parameters(stack: AwsStack) -> dict[str, str]:
    found: dict[str, str] = {}
    for page in stack.ssm.get_paginator("get_parameters_by_path").paginate(
        Path=PARAMS, Recursive=True
    ):
        found.update({p["Name"]: p["Value"] for p in page["Parameters"]})
    return found


def decoded(value: str) -> bytes:
    """A parameter value's bytes: base64-decoded when it is base64 (KMS ciphertext blobs)."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value.encode()


def test_app_secret_and_storage_on_s3_ssm_and_aws_kms(aws_stack: AwsStack) -> None:
    dev, shim = aws_stack.dev, aws_stack.shim
    greeting = dev.greeting()
    assert "Hello from Simple Enclave" in greeting and "secret present: yes" in greeting
    status, _, body = http("GET", dev.ingress_url + "/health")
    assert (status, json.loads(body)) == (200, {"status": "ready"})

    # `enclave dev` passed the test's fake AWS environment on to the runtime (no real AWS).
    runtime_env = read_environ(dev.runtime_pid())
    assert runtime_env["AWS_ACCESS_KEY_ID"] == "testing"
    assert runtime_env["AWS_DEFAULT_REGION"] == "us-east-1"

    env = dev.app_env()
    secret = env["APP_SIGNING_KEY"]
    assert len(secret) == 64 and secret == secret.lower()
    int(secret, 16)
    api = dev.app_api_url
    assert http("PUT", api + "/v1/storage/notes/a.txt", MARKER, auth(env))[0] == 201
    dynamic = json.dumps({"value": DYNAMIC_VALUE, "env_var": "DYN"}).encode()
    assert http("PUT", api + "/v1/secrets/dyn", dynamic, auth(env))[0] == 201

    # First boot created the key, wrote the parameters and the objects: every counter moved.
    info = enclave_info(dev)
    metrics = info["metrics"]
    for counter in ("kms_operations", "storage_writes", "secret_writes", "secret_reads"):
        assert metrics[counter] > 0, (counter, metrics)
    assert metrics["kms_errors"] == metrics["storage_errors"] == 0, metrics
    pcr0, key_id = info["pcr0"], info["kms_key_id"]

    restart(dev)
    wait_for(lambda: "Hello" in dev.greeting(), timeout=BOOT_TIMEOUT_S)
    env2 = dev.app_env()
    assert env2["APP_SIGNING_KEY"] == secret
    assert env2["ENCLAVE_MGMT_TOKEN"] != env["ENCLAVE_MGMT_TOKEN"]
    status, _, body = http("GET", api + "/v1/storage/notes/a.txt", None, auth(env2))
    assert (status, body) == (200, MARKER)
    assert enclave_info(dev)["kms_key_id"] == key_id

    # At rest: the bucket holds only envelopes, SSM only KMS ciphertexts and the key id.
    objects = bucket_objects(aws_stack)
    assert f"{PREFIX}/notes/a.txt" in objects and f"{PREFIX}/secrets/dyn" in objects
    assert all(key.startswith(f"{PREFIX}/") for key in objects), sorted(objects)
    assert objects[f"{PREFIX}/notes/a.txt"].startswith(b"SE1")
    raw_secret = bytes.fromhex(secret)
    needles = [MARKER, DYNAMIC_VALUE.encode(), secret.encode(), raw_secret]
    for key, data in objects.items():
        assert not any(needle in data for needle in needles), f"s3://{BUCKET}/{key}"
    params = parameters(aws_stack)
    assert params[PARAMS + "KMSKeyID"] == key_id
    assert {PARAMS + "signing_key/Ciphertext", PARAMS + "StorageDEK/Ciphertext"} <= set(params)
    for name, value in params.items():
        assert not any(needle in decoded(value) or needle in value.encode() for needle in needles)
        assert secret not in value, name

    # The key in moto carries the canonical policy the runtime checked: this image's PCR0 alone.
    policy = json.loads(aws_stack.kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    assert match_policy(policy).pcr0 == pcr0
    assert "ListGrants" in shim.kms_calls

    # Every Decrypt and GenerateDataKey carried a Recipient the shim verified (two boots).
    plaintext_ops = [op for op in shim.kms_calls if op in RECIPIENT_OPS]
    assert plaintext_ops and len(shim.verified) == len(plaintext_ops), shim.kms_calls
    assert shim.refused == []
    assert {v.pcrs[0].hex() for v in shim.verified} == {pcr0}
    assert len({v.module_id for v in shim.verified}) >= 2  # a fresh NSM per boot


def test_disabled_key_leaves_the_runtime_degraded(aws_stack: AwsStack) -> None:
    dev = aws_stack.dev
    key_id = enclave_info(dev)["kms_key_id"]
    # Through the shim, as any KMS client would (it forwards DisableKey to moto).
    shim_kms = boto3.session.Session(region_name="us-east-1").client(
        "kms", endpoint_url=aws_stack.shim.url
    )
    shim_kms.disable_key(KeyId=key_id)
    assert aws_stack.kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    restart(dev)

    def degraded() -> dict[str, Any] | None:
        status, _, body = http("GET", dev.ingress_url + "/health", timeout=5)
        document: dict[str, Any] = json.loads(body)
        return document if status == 503 and document["status"] == "degraded" else None

    # The watchdog restarts a degraded runtime: poll until one of its boots answers.
    health = wait_for(degraded, timeout=BOOT_TIMEOUT_S)
    assert set(health) == {"status", "error"}
    assert health["error"].startswith("boot stage kms_key failed:"), health
    assert key_id in health["error"] and "Disabled" in health["error"], health

    def status_shows_it() -> dict[str, Any] | None:
        result = dev.cli("status", "-f", "json")
        document: dict[str, Any] = json.loads(result.stdout)
        runtime = document.get("runtime") or {}
        shown = document["status"] == "error" and "Disabled" in runtime.get("detail", "")
        return document if shown else None

    status = wait_for(status_shows_it, timeout=BOOT_TIMEOUT_S)
    assert status["runtime"]["status"] == "degraded"
    assert key_id in status["runtime"]["detail"]
    # No key, no app: the runtime answers for it (between watchdog restarts nothing answers).
    wait_for(lambda: http("GET", dev.ingress_url + "/", timeout=5)[0] == 503)
