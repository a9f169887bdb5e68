"""The hosts' instance role: least privilege, one inline policy, no AWS managed policy.

The supervisor and the runtime (through the IMDS forwarder) both act as this role: the app's
parameters, the storage bucket (under its prefix), ``image.eif`` and ``wheels/*`` in the EIF
bucket, Run Command's channels, and in KMS only a narrowly conditioned ``kms:CreateKey``; every
other KMS right comes from the key policies. Why CreateKey is safe and why
``AmazonSSMManagedInstanceCore`` is not attached: docs/architecture.md, "The CDK stack".
"""

from __future__ import annotations

from aws_cdk import Aws, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct, IConstruct
from enclave_infra.nag import acknowledge
from enclave_infra.naming import EIF_OBJECT_KEY, WHEELS_PREFIX

__all__ = ["CREATE_KEY_CONDITIONS", "PARAMETER_ACTIONS", "RUN_COMMAND_ACTIONS", "instance_role"]

PARAMETER_ACTIONS = [
    "ssm:DeleteParameter",
    "ssm:GetParameter",
    "ssm:GetParameters",
    "ssm:GetParametersByPath",
    "ssm:PutParameter",
]
#: What the SSM agent needs to register the host and receive Run Command invocations.
RUN_COMMAND_ACTIONS = [
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
]

#: ``kms:CreateKey`` only for the kind of key a migration makes (what ``AwsKms.create_key``
#: sends): KMS key material, symmetric encryption, one Region.
CREATE_KEY_CONDITIONS = {
    "StringEquals": {
        "kms:KeyOrigin": "AWS_KMS",
        "kms:KeySpec": "SYMMETRIC_DEFAULT",
        "kms:KeyUsage": "ENCRYPT_DECRYPT",
    },
    "Bool": {"kms:MultiRegion": "false"},
}


def instance_role(
    scope: Construct,
    construct_id: str,
    *,
    parameter_path: str,
    storage: s3.IBucket,
    storage_prefix: str,
    eif: s3.IBucket,
    adopted_arn: str | None = None,
) -> iam.IRole:
    """The role of the enclave hosts, with its one inline policy.

    The role outlives the stack (``enclave destroy`` keeps it: the retained key's policy names
    it, and a role made anew, even under the same name, is another principal). With
    ``adopted_arn``, that retained role is used again, its policy attached anew.

    :param parameter_path: ``/{prefix}/{name}`` (no trailing slash).
    :param storage_prefix: the s3 backend's key prefix (``""`` or ending in ``/``).
    """
    statements = _statements(parameter_path, storage, storage_prefix, eif)
    role: iam.IRole
    checked: IConstruct
    if adopted_arn is None:
        made = iam.Role(
            scope,
            construct_id,
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=(
                "Simple Enclave host and enclave: its parameters, its buckets, Run Command, "
                "creating migration keys"
            ),
            inline_policies={"EnclaveHost": iam.PolicyDocument(statements=statements)},
        )
        # Kept when the stack is deleted, not after a failed first create (nothing used it).
        made.apply_removal_policy(RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE)
        role = checked = made
    else:
        role = iam.Role.from_role_arn(scope, construct_id, adopted_arn, mutable=True)
        # The same name as the inline policy the role was made with: it replaces it.
        checked = iam.Policy(
            scope, f"{construct_id}Policy", policy_name="EnclaveHost", statements=statements
        )
        checked.attach_to_role(role)
    _acknowledge_wildcards(checked, parameter_path, storage, storage_prefix, eif)
    return role


def _statements(
    parameter_path: str, storage: s3.IBucket, storage_prefix: str, eif: s3.IBucket
) -> list[iam.PolicyStatement]:
    """The statements of the role's one policy."""
    parameter_arn = f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}:{Aws.ACCOUNT_ID}:parameter"
    return [
        iam.PolicyStatement(
            sid="AppParameters",
            actions=PARAMETER_ACTIONS,
            resources=[f"{parameter_arn}{parameter_path}/*"],
        ),
        iam.PolicyStatement(
            # GetParametersByPath is authorized against the path itself.
            sid="AppParameterPath",
            actions=["ssm:GetParametersByPath"],
            resources=[f"{parameter_arn}{parameter_path}"],
        ),
        iam.PolicyStatement(
            sid="StorageObjects",
            actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            resources=[storage.arn_for_objects(f"{storage_prefix}*")],
        ),
        # Unconditioned: S3 answers HeadObject of a missing key with 404 (not 403) only to a
        # caller allowed ListBucket, and HeadBucket needs it too; it reveals key names only.
        _list(storage, "StorageList", None),
        iam.PolicyStatement(
            sid="EifAndWheelsRead",
            actions=["s3:GetObject"],
            resources=[
                eif.arn_for_objects(EIF_OBJECT_KEY),
                eif.arn_for_objects(f"{WHEELS_PREFIX}*"),
            ],
        ),
        _list(eif, "WheelsList", f"{WHEELS_PREFIX}*"),
        iam.PolicyStatement(
            sid="RunCommandRegistration",
            actions=["ssm:UpdateInstanceInformation"],
            resources=[f"arn:{Aws.PARTITION}:ec2:{Aws.REGION}:{Aws.ACCOUNT_ID}:instance/*"],
        ),
        iam.PolicyStatement(sid="RunCommandChannels", actions=RUN_COMMAND_ACTIONS, resources=["*"]),
        iam.PolicyStatement(
            # `enclave migrate` step 2; the policy travels in the CreateKey call (no PutKeyPolicy).
            sid="MigrationCreateKey",
            actions=["kms:CreateKey"],
            resources=["*"],
            conditions=CREATE_KEY_CONDITIONS,
        ),
    ]


def _acknowledge_wildcards(
    role: IConstruct, parameter_path: str, storage: s3.IBucket, storage_prefix: str, eif: s3.IBucket
) -> None:
    """The policy's wildcard resources, each with its reason (cdk-nag IAM5)."""
    _wildcard(
        role,
        f"arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:parameter{parameter_path}/*",
        "The app's parameters are created at run time under its own path /{prefix}/{name}/ "
        "(secret ciphertexts, migration state); the wildcard is that path.",
    )
    _wildcard(
        role,
        "arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:instance/*",
        "ssm:UpdateInstanceInformation is called by the SSM agent of hosts that the auto "
        "scaling group (or a replacement) creates later; their ids are not known at deploy.",
    )
    _wildcard(
        role,
        "*",
        "The ssmmessages and ec2messages actions Run Command needs support no resource-level "
        "permissions (AWS service authorization reference). kms:CreateKey has no resource (the "
        "key does not exist yet), so '*' is its only resource; it is limited by conditions to "
        "single-Region symmetric AWS_KMS keys, and a key it creates holds nothing: the old "
        "enclave re-encrypts secrets only under a key whose policy it verified is locked to the "
        "new PCR0. Nothing else uses '*'.",
    )
    _wildcard(
        role,
        f"{_arn(storage)}/{storage_prefix}*",
        "The enclave stores objects under keys it chooses at run time, in its own bucket "
        "(under the storage prefix); the objects are AES-256-GCM encrypted by the enclave.",
    )
    _wildcard(
        role,
        f"{_arn(eif)}/{WHEELS_PREFIX}*",
        "The host installs simple-enclave from the wheels `enclave deploy` uploads; their "
        "file names carry versions decided at upload time. Read only.",
    )


def _wildcard(scope: IConstruct, resource: str, reason: str) -> None:
    """Acknowledge cdk-nag's IAM5 finding for one wildcard resource of the role's policy."""
    acknowledge(scope, f"IAM5[Resource::{resource}]", reason)


def _list(bucket: s3.IBucket, sid: str, prefix: str | None) -> iam.PolicyStatement:
    conditions = {"StringLike": {"s3:prefix": [prefix]}} if prefix else None
    return iam.PolicyStatement(
        sid=sid, actions=["s3:ListBucket"], resources=[bucket.bucket_arn], conditions=conditions
    )


def _arn(bucket: s3.IBucket) -> str:
    """A bucket's ARN as cdk-nag prints it: its CfnBucket's ``Fn::GetAtt``, or an adopted
    bucket's literal ARN."""
    from aws_cdk import Stack

    child = bucket.node.default_child
    if child is None:  # adopted: s3.Bucket.from_bucket_name
        return f"arn:<AWS::Partition>:s3:::{bucket.bucket_name}"
    return f"<{Stack.of(bucket).get_logical_id(child)}.Arn>"  # type: ignore[arg-type]
