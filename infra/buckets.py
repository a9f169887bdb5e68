"""The stack's S3 buckets: storage, EIF (artifacts) and the access-log bucket they log to.

Every bucket: public access blocked, TLS required, SSE-S3, versioning, owner-owned objects (no
ACLs), retained when the stack is deleted. Why SSE-S3 rather than SSE-KMS:
docs/architecture.md, "The CDK stack".
"""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

__all__ = ["adopted_bucket", "hardened_bucket", "logs_bucket"]


def _bucket(
    scope: Construct,
    construct_id: str,
    *,
    bucket_name: str | None = None,
    logs: s3.IBucket | None = None,
    logs_prefix: str | None = None,
    lifecycle_rules: list[s3.LifecycleRule] | None = None,
) -> s3.Bucket:
    return s3.Bucket(
        scope,
        construct_id,
        bucket_name=bucket_name,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        encryption=s3.BucketEncryption.S3_MANAGED,
        enforce_ssl=True,
        versioned=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        removal_policy=RemovalPolicy.RETAIN,
        server_access_logs_bucket=logs,
        server_access_logs_prefix=logs_prefix,
        lifecycle_rules=lifecycle_rules,
    )


def logs_bucket(scope: Construct, construct_id: str) -> s3.Bucket:
    """The bucket receiving the other buckets' server access logs and the VPC flow logs.

    Log objects expire after a year, old versions after 30 days. Its own access is not
    logged (S3 would log its log deliveries forever); cdk-nag's S1 exempts log targets.
    """
    bucket = _bucket(
        scope,
        construct_id,
        lifecycle_rules=[
            s3.LifecycleRule(
                expiration=Duration.days(365),
                noncurrent_version_expiration=Duration.days(30),
            )
        ],
    )
    return bucket


def hardened_bucket(
    scope: Construct,
    construct_id: str,
    *,
    bucket_name: str | None,
    logs: s3.IBucket,
    logs_prefix: str,
) -> s3.Bucket:
    """A bucket with the common hardening, logging its access to ``logs`` under ``logs_prefix``.

    :param bucket_name: a fixed name (see :mod:`enclave_infra.naming`) or None for a generated one.
    """
    return _bucket(scope, construct_id, bucket_name=bucket_name, logs=logs, logs_prefix=logs_prefix)


def adopted_bucket(
    scope: Construct, construct_id: str, *, bucket_name: str, logs: s3.Bucket, logs_prefix: str
) -> s3.IBucket:
    """A bucket an earlier deployment retained, used again (see ``naming.Adopted``).

    It keeps the versioning, encryption, public access block and ownership it was made with; its
    TLS-only bucket policy went with the old stack, so the stack gives it one again. Its access
    logging still names the old (retained) log bucket, whose delivery policy went with the old
    stack too: ``logs`` lets S3 deliver this bucket's logs under ``logs_prefix``, and
    ``enclave deploy`` points the bucket's logging there (CloudFormation can set it only on a
    bucket it owns).
    """
    bucket = s3.Bucket.from_bucket_name(scope, construct_id, bucket_name)
    logs.add_to_resource_policy(
        iam.PolicyStatement(
            sid=f"{construct_id}AccessLogs",
            principals=[iam.ServicePrincipal("logging.s3.amazonaws.com")],
            actions=["s3:PutObject"],
            resources=[logs.arn_for_objects(f"{logs_prefix}*")],
            conditions={
                "ArnLike": {"aws:SourceArn": bucket.bucket_arn},
                "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
            },
        )
    )
    policy = s3.BucketPolicy(scope, f"{construct_id}Policy", bucket=bucket)
    policy.document.add_statements(
        iam.PolicyStatement(
            sid="DenyInsecureTransport",
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=["s3:*"],
            resources=[bucket.bucket_arn, bucket.arn_for_objects("*")],
            conditions={"Bool": {"aws:SecureTransport": "false"}},
        )
    )
    return bucket
