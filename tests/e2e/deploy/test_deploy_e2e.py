"""`enclave deploy`, `status --cloud` and `destroy` end to end, as a user runs them, against moto.

What runs for real: the `enclave` CLI as a subprocess in the project folder; step 1's `pip
download` of the hosts' wheelhouse (this checkout's wheel, built by the test, found in
`artifacts/wheels/`); the in-process CDK synthesis; the pinned npm `aws-cdk` CLI (`cdk bootstrap`,
`cdk deploy`, `cdk destroy`) creating and deleting CloudFormation stacks; the uploads to S3; the
Run Command scripts deploy, status and destroy send (`sh -c`, `set -eu`); on the fake host, the
real `enclave host install`, the real supervisor, and the real runtime and app launched through the
fake `nitro-cli`, booting against the stack's SSM parameter, its KMS key (through the KMS shim,
which checks Recipients and the key policy for the caller, the stack's instance role) and its
storage bucket.

The stand-ins (tests/e2e/deploy/): moto 5.2.6 is AWS, corrected where it differs for this stack
(`moto_patches.py`, each patch saying what it corrects); its Run Command runs scripts on fake
hosts (`run_command.py`); a fake host is a folder per instance whose first boot
(`first_boot.py`) does what the user data does, from the user data the stack delivered; its
`systemctl` and `aws` are fakes (`host_tools/`); the instance role's credentials come from STS
AssumeRole, not IMDS; the enclave image runs in development mode on the simulated NSM reporting
the EIF's PCR0 and chaining to one dev CA the shim trusts.

What this test CANNOT check, and where it is checked instead:

- IAM: moto enforces no IAM policy, so the instance role's scope (its parameter path, its buckets,
  no key administration) is not exercised here; `tests/infra/test_role.py` asserts the synthesized
  policy and cdk-nag's AwsSolutions pack runs over every stack (`tests/infra`, `tox -e infra`).
- Key-policy enforcement by AWS KMS: only the test's KMS shim evaluates the key policy here;
  `tests/infra/test_key.py` checks the policy the stack creates, `tests/attacks/` (test_keys.py,
  test_ciphertexts.py, test_retained_record.py) checks what the enclave and deploy refuse.
- Bucket policies (TLS only, public access block, encryption): moto stores but does not enforce
  them; `tests/infra/test_stack.py` and cdk-nag assert them.
- IMDSv2 (hop limit 1), Nitro Enclaves options, the instance type's real resources, the
  attestation document of a real NSM: moto enforces none of the instance's metadata and enclave
  options (`tests/infra/test_stack.py`, `tests/infra/test_scaled.py` assert them in the
  template, `tests/infra/test_instances.py` the instance types); real Nitro documents are
  checked in `tests/enclave_core` against `tests/data/nitro/`.
- The user data on a real Amazon Linux AMI (dnf, the virtualenv, systemd): the first boot here
  reads the delivered user data and does its steps under a folder; `tests/infra/test_user_data.py`
  checks the script itself.
- A scaled deployment (`instances` > 1, the network load balancer): this test deploys one host.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from enclave_core.kmspolicy.canonical import match_policy
from tests.doubles.host_tools import fake_state
from tests.e2e.deploy.caller_shim import CallerKmsShim
from tests.e2e.deploy.cli import EnclaveCli, Result
from tests.e2e.deploy.hosts import Host, logs
from tests.e2e.deploy.moto_server import Moto
from tests.e2e.deploy.processes import alive, read_record
from tests.e2e.deploy.project import (
    STACK,
    STORAGE_BUCKET,
    STORAGE_PREFIX,
    Project,
)
from tests.e2e.stack import http, proc_children, read_environ
from tests.helpers import wait_for
from tests.services.kms_recipient_shim import RECIPIENT_OPS

pytestmark = pytest.mark.e2e

STEP = re.compile(r"^\[(\d)/6\] ", re.MULTILINE)
APP_TIMEOUT_S = 60.0


def deployed(result: Result) -> None:
    """A deploy that went through its six steps, in order, and reported a running enclave."""
    assert result.returncode == 0, result.describe()
    assert [int(k) for k in STEP.findall(result.stdout)] == [1, 2, 3, 4, 5, 6], result.describe()
    assert f"deployed stack {STACK} (PCR0 " in result.stdout, result.describe()
    assert re.search(r"^  i-[0-9a-f]+: running, \S+, enclave running$", result.stdout, re.M), (
        result.describe()
    )


def described(moto: Moto) -> dict[str, Any]:
    """The stack as CloudFormation (moto) describes it."""
    [stack] = moto.client("cloudformation").describe_stacks(StackName=STACK)["Stacks"]
    return dict(stack)


def outputs_of(moto: Moto) -> dict[str, str]:
    """The stack's outputs."""
    return {o["OutputKey"]: o["OutputValue"] for o in described(moto).get("Outputs") or []}


def interrupted_cdk_deploy(moto: Moto) -> None:
    """What a ``cdk deploy`` stopped before executing its change set leaves: a new stack
    in ``REVIEW_IN_PROGRESS`` holding nothing."""
    template = {"Resources": {"Nothing": {"Type": "AWS::SSM::Parameter"}}}
    moto.client("cloudformation").create_change_set(
        StackName=STACK,
        ChangeSetName="cdk-deploy-change-set",
        ChangeSetType="CREATE",
        TemplateBody=json.dumps(template),
    )


def stack_exists(moto: Moto) -> bool:
    names = [
        s["StackName"]
        for s in moto.client("cloudformation").list_stacks()["StackSummaries"]
        if s["StackStatus"] != "DELETE_COMPLETE"
    ]
    return STACK in names


def the_host(moto: Moto, instance_id: str) -> Host:
    return Host.of(moto.hosts, instance_id)


def app_json(project: Project) -> dict[str, Any]:
    """GET /json through the host's ingress: the app counts a visit in its storage."""
    status, _, body = http("GET", project.ingress_url + "/json", timeout=10)
    assert status == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


def app_environment(host: Host) -> dict[str, str]:
    """The app's environment inside the fake enclave (its static secret is there)."""
    [enclave] = fake_state(host.root)["enclaves"].values()
    for pid in proc_children(int(enclave["ProcessID"])):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"app.py" in cmdline:
            return read_environ(pid)
    raise AssertionError(f"no app process under the enclave {enclave}")


def storage_objects(moto: Moto) -> dict[str, bytes]:
    s3 = moto.client("s3")
    listed = s3.list_objects_v2(Bucket=STORAGE_BUCKET).get("Contents") or []
    return {
        item["Key"]: s3.get_object(Bucket=STORAGE_BUCKET, Key=item["Key"])["Body"].read()
        for item in listed
    }


def check_first_deploy(result: Result, moto: Moto, project: Project) -> dict[str, str]:
    """The first deploy: its output, what AWS holds, the host and the enclave; the outputs."""
    deployed(result)
    out = result.stdout
    assert f"[3/6] cdk deploy: creating stack {STACK}" in out
    assert re.search(r"^    Successfully downloaded .*\bsimple-enclave\b", out, re.M), (
        "step 1 ran pip download, its lines streamed"
    )
    uploaded = re.search(
        r"^\[4/6\] uploading image\.eif and (\d+) wheels to s3://(\S+)/$", out, re.M
    )
    assert uploaded and int(uploaded.group(1)) > 10, out
    outputs = outputs_of(moto)
    assert outputs["LockedPCR0"] == project.pcr0
    assert outputs["StorageBucketName"] == STORAGE_BUCKET
    eif_bucket = outputs["EifBucketName"]
    assert uploaded.group(2) == eif_bucket
    s3 = moto.client("s3")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=eif_bucket).get("Contents") or []}
    assert "image.eif" in keys and any(k.startswith("wheels/simple_enclave-") for k in keys)
    assert len([k for k in keys if k.startswith("wheels/")]) == int(uploaded.group(1))
    # The hosts' simple-enclave is this checkout's wheel (artifacts/wheels/, found first).
    [built] = (project.folder / "artifacts" / "wheels").glob("simple_enclave-*.whl")
    shipped = s3.get_object(Bucket=eif_bucket, Key=f"wheels/{built.name}")["Body"].read()
    assert shipped == built.read_bytes()
    instance_id = outputs["InstanceID"]
    # Step 5 reports what the start script printed on the host (its last line).
    assert re.search(
        rf"^    {instance_id}: (enclave starting \(HTTP 20[02]\)|enclave already running)$",
        out,
        re.M,
    ), result.describe()
    host = the_host(moto, instance_id)
    assert alive(read_record(host.record)), logs(moto.hosts)
    init_log = host.init_log.read_text(encoding="utf-8")
    assert "simple-enclave host ready" in init_log
    assert f"instance role {outputs['EC2InstanceRoleARN']}" in init_log
    # The supervisor runs the enclave.yaml the stack's user data carried, the project's own.
    host_config = host.path("/opt/simple-enclave/app/enclave.yaml").read_text(encoding="utf-8")
    assert host_config == project.config.read_text(encoding="utf-8")
    [run] = [c for c in fake_state(host.root)["calls"] if c[0] == "run-enclave"]
    assert run[run.index("--eif-path") + 1] == str(
        host.path("/opt/simple-enclave/app/artifacts/image.eif")
    )
    assert "--debug-mode" not in run
    return outputs


def check_status(enclave: EnclaveCli, outputs: dict[str, str]) -> None:
    result = enclave("status", "--cloud", "-f", "json")
    assert result.returncode == 0, result.describe()
    status = json.loads(result.stdout)
    instance_id = outputs["InstanceID"]
    assert status["stack"] == STACK
    assert status["stack_status"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE"), status
    assert [(i["id"], i["state"], i["type"]) for i in status["instances"]] == [
        (instance_id, "running", "m6i.xlarge")
    ]
    health = status["health"][instance_id]
    assert health["status"] == "running", status
    assert health["restarts"] == 0, status
    assert status["outputs"]["KMSKeyID"] == outputs["KMSKeyID"]


def check_enclave_data(moto: Moto, project: Project, shim: CallerKmsShim, role: str) -> None:
    """The enclave booted on the stack's key and stores the app's data, encrypted, in S3."""
    objects = storage_objects(moto)
    assert f"{STORAGE_PREFIX}/visits" in objects, sorted(objects)
    assert objects[f"{STORAGE_PREFIX}/visits"].startswith(b"SE1")  # an envelope, not JSON
    assert b"visits" not in objects[f"{STORAGE_PREFIX}/visits"]
    plaintext_ops = [op for op in shim.kms_calls if op in RECIPIENT_OPS]
    assert plaintext_ops and len(shim.verified) == len(plaintext_ops), shim.kms_calls
    assert {v.pcrs[0].hex() for v in shim.verified} == {project.pcr0}
    assert shim.refused == []
    assert shim.callers == {role}


def refused_new_image(enclave: EnclaveCli, project: Project, moto: Moto) -> None:
    """A different PCR0 is refused before anything is created: the way is enclave migrate."""
    before = outputs_of(moto)
    saved = project.pcr_file.read_text(encoding="utf-8")
    other = dict(json.loads(saved), PCR0=hashlib.sha384(b"another image").hexdigest())
    project.pcr_file.write_text(json.dumps(other), encoding="utf-8")
    try:
        result = enclave("deploy", "--yes")
    finally:
        project.pcr_file.write_text(saved, encoding="utf-8")
    assert result.returncode != 0, result.describe()
    assert f"stack {STACK} is locked to PCR0 {project.pcr0[:16]}" in result.output
    assert f"this EIF measures {other['PCR0'][:16]}" in result.output
    assert "enclave migrate --eif artifacts/image.eif" in result.output, result.describe()
    assert "[2/6]" not in result.stdout, "refused in step 1, before synthesizing"
    assert outputs_of(moto) == before


def destroyed(result: Result, outputs: dict[str, str]) -> None:
    assert result.returncode == 0, result.describe()
    out = result.stdout
    assert f"destroyed stack {STACK}" in out
    remains = out[out.index("still there, until you delete it:") :]
    for bucket in (STORAGE_BUCKET, outputs["EifBucketName"], outputs["LogsBucketName"]):
        assert f"S3 bucket {bucket} (retained" in remains, out
    role = outputs["EC2InstanceRoleARN"].rpartition("/")[2]
    assert f"IAM role {role} (retained" in remains, out
    assert f"KMS key {outputs['KMSKeyID']} (DeletionPolicy Retain), still enabled" in remains


def test_deploy_status_redeploy_refusal_destroy_and_deploy_again(
    enclave: EnclaveCli, moto: Moto, project: Project, kms_shim: CallerKmsShim
) -> None:
    # -- enclave deploy: the stack, the host, the enclave running ------------------------------
    outputs = check_first_deploy(enclave("deploy", "--yes"), moto, project)
    instance_id, role = outputs["InstanceID"], outputs["EC2InstanceRoleARN"]
    check_status(enclave, outputs)
    # Each GET /json counts a visit in the app's storage (an object in the storage bucket).
    documents = [wait_for(lambda: app_json(project), timeout=APP_TIMEOUT_S)]
    documents += [app_json(project) for _ in range(2)]
    assert [d["visits"] for d in documents] == [1, 2, 3], documents
    assert all(d["secret_present"] is True for d in documents)
    secret = app_environment(the_host(moto, instance_id))["APP_SIGNING_KEY"]
    check_enclave_data(moto, project, kms_shim, role)

    # -- deploy again, nothing changed: the same host goes on running --------------------------
    again = enclave("deploy", "--yes")
    deployed(again)
    assert f"[3/6] cdk deploy: updating stack {STACK}" in again.stdout
    assert "no changes" in again.stdout, again.describe()
    assert re.search(rf"^    {instance_id}: enclave already running$", again.stdout, re.M), (
        again.describe()
    )
    assert outputs_of(moto) == outputs
    assert app_json(project)["visits"] == 4

    # -- a new image is refused: the key's policy never changes --------------------------------
    refused_new_image(enclave, project, moto)

    # -- enclave destroy: the stack goes, the buckets, role and key stay -----------------------
    host = the_host(moto, instance_id)
    gone = enclave("destroy", "--force")
    destroyed(gone, outputs)
    assert not stack_exists(moto)
    assert not alive(read_record(host.record)), "the terminated instance's supervisor stopped"
    assert f"{STORAGE_PREFIX}/visits" in storage_objects(moto)
    kms = moto.client("kms")
    key = kms.describe_key(KeyId=outputs["KMSKeyID"])["KeyMetadata"]
    assert key["KeyState"] == "Enabled"
    policy = json.loads(kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"])
    assert match_policy(policy).pcr0 == project.pcr0
    assert moto.client("iam").get_role(RoleName=role.rpartition("/")[2])["Role"]["Arn"] == role
    record = json.loads(
        moto.client("ssm").get_parameter(Name="/e2e/hello/Retained")["Parameter"]["Value"]
    )
    assert record["stack"] == STACK
    assert record["resources"] == {
        "storage_bucket": STORAGE_BUCKET,
        "eif_bucket": outputs["EifBucketName"],
        "role_arn": role,
        "key_id": outputs["KMSKeyID"],
        "key_pcr0": project.pcr0,
    }

    # -- an interrupted cdk deploy left the stack REVIEW_IN_PROGRESS: the way out is named -----
    interrupted_cdk_deploy(moto)
    stuck = enclave("deploy", "--yes")
    assert stuck.returncode != 0, stuck.describe()
    assert f"stack {STACK} is stuck in REVIEW_IN_PROGRESS" in stuck.output, stuck.describe()
    assert "enclave deploy --delete-failed-stack" in stuck.output
    assert "[2/6]" not in stuck.stdout
    assert described(moto)["StackStatus"] == "REVIEW_IN_PROGRESS"

    # -- deploy again: a new host adopts them, and the first deployment's data is back ---------
    back = enclave("deploy", "--yes", "--delete-failed-stack")
    deployed(back)
    assert f"deleting stack {STACK} (REVIEW_IN_PROGRESS)" in back.stdout, back.describe()
    assert f"[3/6] cdk deploy: creating stack {STACK}" in back.stdout
    assert "adopting what the destroyed deployment left" in back.stdout, back.describe()
    new = outputs_of(moto)
    assert new["InstanceID"] != instance_id
    assert (new["KMSKeyID"], new["EC2InstanceRoleARN"]) == (outputs["KMSKeyID"], role)
    assert new["StorageBucketName"] == STORAGE_BUCKET
    document = wait_for(lambda: app_json(project), timeout=APP_TIMEOUT_S)
    assert document["visits"] == 5, "the count the destroyed deployment stored, plus one"
    assert app_environment(the_host(moto, new["InstanceID"]))["APP_SIGNING_KEY"] == secret
    assert kms_shim.refused == []
