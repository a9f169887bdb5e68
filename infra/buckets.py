"""The stack's S3 buckets: storage, EIF (artifacts) and the access-log bucket they log to.

Every bucket: public access blocked, TLS required, SSE-S3, versioning, owner-owned objects (no
ACLs), retained when the stack is deleted. Why SSE-S3 rather than SSE-KMS:
docs/architecture.md, "The CDK stack".
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

__all__ = ["hardened_bucket", "logs_bucket"]


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
