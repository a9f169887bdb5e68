"""What a destroyed deployment leaves behind, and how the next ``enclave deploy`` takes it back.

``enclave destroy`` keeps the storage and EIF buckets, the instance role and the KMS key (the
key's policy names that role: a role made anew, even under the same name, is another principal,
so without the old role nobody could ever use the key). Before deleting the stack it records
them in the parameter ``/{prefix}/{name}/Retained``: the buckets, the role, the key in use (the
one ``KMSKeyID`` names, a migrated key included) and the PCR0 that key is locked to.

The next ``enclave deploy`` of a stack that does not exist reads that record and checks it
against AWS before anything is created: the role exists, the key is enabled, customer managed,
from KMS, and its policy is exactly the enclave's canonical policy for that role; the buckets
belong to the account. The stack then adopts them (:class:`enclave_infra.naming.Adopted`) and the
data of the destroyed deployment is readable again. A record that does not check out, or a new
image the key is not locked to, is refused with the way out. Without a record, buckets with the
stack's fixed names that the account owns are adopted (their old objects stay).

The record is a host-writable parameter like any other: it only chooses what preflight checks,
and the enclave checks its key again at every boot (docs/threat-model.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from enclave_infra import naming
from enclave_infra.naming import ADOPTED_OUTPUT, Adopted

from enclave_core.aws.clients import aws_errors, error_code, map_client_error
from enclave_core.config import Config
from enclave_core.deploy.stack import find_output
from enclave_core.errors import EnclaveError, NotFound
from enclave_core.kmspolicy.canonical import PolicyMismatch, match_policy

#: The record's parameter, under the app's path.
RETAINED_PARAMETER = "Retained"
_OUTPUT_FIELDS = {
    "storage_bucket": "StorageBucketName",
    "eif_bucket": "EifBucketName",
    "role_arn": "EC2InstanceRoleARN",
}


def parameter_name(config: Config) -> str:
    """``/{prefix}/{name}/Retained``."""
    return f"{naming.parameter_path(config)}/{RETAINED_PARAMETER}"


def adopted_of(outputs: Mapping[str, str]) -> Adopted:
    """What a deployed stack adopted (its ``AdoptedResources`` output), for its updates.

    :raises EnclaveError: the output is there but malformed.
    """
    text = _output(outputs, ADOPTED_OUTPUT)
    if not text:
        return Adopted()
    try:
        return Adopted.from_json(text)
    except ValueError as exc:
        raise EnclaveError(f"the stack's {ADOPTED_OUTPUT} output is malformed: {exc}") from None


def _output(outputs: Mapping[str, str], name: str) -> str | None:
    return find_output(outputs, name)


# -- destroy ---------------------------------------------------------------------------------
def retained_from_stack(
    clients: Callable[[str], Any], outputs: Mapping[str, str], key_in_use: str | None
) -> Adopted:
    """What will remain of the stack described by ``outputs``: its buckets, role and key in use.

    :param key_in_use: the key the ``KMSKeyID`` parameter names (``enclave migrate`` switches
        it), or None for the stack's own; its PCR0 is read from its policy.
    :raises EnclaveError: the key's policy cannot be read, or is not the enclave's.
    """
    found = {field: _output(outputs, output) for field, output in _OUTPUT_FIELDS.items()}
    key_id = key_in_use or _output(outputs, "KMSKeyID")
    pcr0 = _locked_pcr0(clients, key_id, found["role_arn"]) if key_id else None
    return Adopted(key_id=key_id, key_pcr0=pcr0, **found)


def _locked_pcr0(clients: Callable[[str], Any], key_id: str, role_arn: str | None) -> str:
    """The PCR0 the key's canonical policy is locked to; refuses any other policy."""
    with aws_errors("KMS", "GetKeyPolicy", f"key {key_id}"):
        text = clients("kms").get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]
    try:
        params = match_policy(json.loads(text) if isinstance(text, str) else text)
    except (PolicyMismatch, ValueError) as exc:
        raise EnclaveError(f"KMS key {key_id} does not have the enclave's policy: {exc}") from None
    if role_arn and params.principal != role_arn:
        raise EnclaveError(f"KMS key {key_id}'s policy names {params.principal}, not {role_arn}")
    return params.pcr0


def record(config: Config, clients: Callable[[str], Any], stack: str, retained: Adopted) -> str:
    """Write the record of what ``stack`` leaves behind; return the parameter's name."""
    name = parameter_name(config)
    doc = {
        "stack": stack,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "resources": json.loads(retained.to_json()),
    }
    with aws_errors("SSM", "PutParameter", name):
        clients("ssm").put_parameter(
            Name=name,
            Value=json.dumps(doc, sort_keys=True),
            Type="String",
            Overwrite=True,
            Description="what enclave destroy left behind; the next enclave deploy adopts it",
        )
    return name


# -- deploy ----------------------------------------------------------------------------------
def read_record(config: Config, clients: Callable[[str], Any]) -> Adopted | None:
    """The record ``enclave destroy`` wrote, or None.

    :raises EnclaveError: it exists but is malformed (the way out is named).
    """
    name = parameter_name(config)
    text = _parameter(clients, name)
    if text is None:
        return None
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("resources"), dict):
            raise ValueError("no resources object")
        return Adopted.from_json(json.dumps(doc["resources"]))
    except ValueError as exc:
        raise EnclaveError(
            f"the parameter {name} (what enclave destroy left) is malformed: {exc}. "
            f"{_afresh(config)}"
        ) from None


def _parameter(clients: Callable[[str], Any], name: str) -> str | None:
    """A parameter's value, or None when it does not exist (expected: not logged as a failure)."""
    with aws_errors("SSM", "GetParameter", name):
        try:
            answer = clients("ssm").get_parameter(Name=name)
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                raise
            return None
    return str(answer["Parameter"]["Value"])


def _afresh(config: Config) -> str:
    return (
        "To deploy afresh without the retained data, delete the record: aws ssm "
        f"delete-parameter --name {parameter_name(config)}"
    )


def find_adoption(
    config: Config,
    clients: Callable[[str], Any],
    *,
    pcr0: str,
    progress: Callable[[str], None],
) -> Adopted:
    """What a new stack adopts: the checked record, or the account's buckets of the same names.

    :param pcr0: the EIF's PCR0; an adopted key must be locked to it.
    :raises EnclaveError: a record that does not check out, a key locked to another PCR0, or a
        bucket name another account owns; each message says the way out.
    """
    account = str(config.account)
    retained = read_record(config, clients)
    if retained is None:
        return _same_name_buckets(config, clients, account, progress)
    problem = (
        _foreign_name(config, retained)
        or _check_role(clients, retained.role_arn)
        or _check_key(clients, retained)
    )
    if problem:
        raise EnclaveError(
            f"enclave destroy left {parameter_name(config)}, but {problem}: the data it "
            f"protected cannot be adopted. {_afresh(config)}"
        )
    if retained.key_pcr0 != pcr0:
        raise EnclaveError(
            f"the retained key {retained.key_id} of the destroyed deployment is locked to PCR0 "
            f"{(retained.key_pcr0 or '')[:16]}…, and this EIF measures {pcr0[:16]}…: deploy the "
            "image with that PCR0 to get the data back (then enclave migrate to the new one). "
            f"{_afresh(config)}"
        )
    buckets = {}
    for field in ("storage_bucket", "eif_bucket"):
        name = getattr(retained, field)
        buckets[field] = name if name and _bucket_state(clients, name, account) == "ours" else None
    adopted = replace(retained, **buckets)
    progress(
        f"    adopting what the destroyed deployment left: role {adopted.role_arn}, key "
        f"{adopted.key_id}" + "".join(f", bucket {name}" for name in buckets.values() if name)
    )
    return adopted


def _same_name_buckets(
    config: Config, clients: Callable[[str], Any], account: str, progress: Callable[[str], None]
) -> Adopted:
    found: dict[str, str | None] = {}
    for field, name in (
        ("storage_bucket", naming.storage_bucket_name(config)),
        ("eif_bucket", naming.eif_bucket_name(config)),
    ):
        state = _bucket_state(clients, name, account) if name else "absent"
        if state == "foreign":
            raise EnclaveError(
                f"the bucket name {name} is taken by another AWS account (or these credentials "
                "may not read it): choose another prefix or name in enclave.yaml (bucket names "
                "are global)"
            )
        found[field] = name if state == "ours" else None
        if state == "ours":
            progress(
                f"    adopting bucket {name}, left by an earlier deployment (its objects stay; "
                "what an older key encrypted stays unreadable)"
            )
    return Adopted(**found)


def _bucket_state(clients: Callable[[str], Any], name: str, account: str) -> str:
    """``ours``, ``absent`` or ``foreign`` (another account owns the name)."""
    try:
        clients("s3").head_bucket(Bucket=name, ExpectedBucketOwner=account)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return "absent"
        if code in ("403", "AccessDenied", "Forbidden"):
            return "foreign"
        raise map_client_error(exc, service="S3", operation="HeadBucket", resource=name) from None
    except BotoCoreError as exc:
        raise map_client_error(exc, service="S3", operation="HeadBucket", resource=name) from None
    return "ours"


def _foreign_name(config: Config, retained: Adopted) -> str | None:
    """Why the record names a role or bucket this stack never made, or None.

    The record is host-writable: naming another role of the account (an administrator's) would
    give the hosts that role through the new instance profile, and naming another bucket would
    give them its objects. Only what the stack itself created is adopted: its role
    (``{stack}-…``, as CloudFormation names it) and its buckets (their fixed names, or
    CloudFormation's ``{stack}-…`` in lower case).
    """
    stack = naming.stack_name(config)
    role = (retained.role_arn or "").rpartition("/")[2]
    if role and not role.startswith(f"{stack}-"):
        return f"its role {retained.role_arn} is not one stack {stack} made"
    fixed = {
        "storage_bucket": naming.storage_bucket_name(config),
        "eif_bucket": naming.eif_bucket_name(config),
    }
    for field, name in fixed.items():
        given = getattr(retained, field)
        if given and given != name and not given.startswith(f"{stack.lower()}-"):
            return f"its bucket {given} is not one stack {stack} made"
    return None


def _check_role(clients: Callable[[str], Any], role_arn: str | None) -> str | None:
    if not role_arn:
        return "it names no role"
    name = role_arn.rpartition("/")[2]
    with aws_errors("IAM", "GetRole", name, codes={"NoSuchEntity": NotFound}):
        try:
            clients("iam").get_role(RoleName=name)
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
            return f"the role {role_arn} no longer exists (the retained key trusts that role only)"
    return None


def _check_key(clients: Callable[[str], Any], retained: Adopted) -> str | None:
    key_id = retained.key_id
    if not key_id:
        return "it names no key"
    with aws_errors("KMS", "DescribeKey", f"key {key_id}"):
        try:
            meta = clients("kms").describe_key(KeyId=key_id)["KeyMetadata"]
        except ClientError as exc:
            if error_code(exc) != "NotFoundException":
                raise
            return f"the key {key_id} no longer exists"
    state = meta.get("KeyState")
    if state != "Enabled":
        return f"the key {key_id} is {state}"
    if meta.get("Origin") != "AWS_KMS" or meta.get("KeyManager") != "CUSTOMER":
        return f"the key {key_id} is not a customer managed key with KMS key material"
    try:
        pcr0 = _locked_pcr0(clients, key_id, retained.role_arn)
    except EnclaveError as exc:
        return str(exc)
    if pcr0 != retained.key_pcr0:
        return f"the key {key_id} is locked to PCR0 {pcr0[:16]}…, not the recorded one"
    return None
