"""Fixtures of the deploy tests."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from tests.doubles.stubbed_aws import ACCOUNT, EIF_BUCKET, OUTPUTS


@pytest.fixture
def s3(moto_reset: str, boto3_session: boto3.session.Session) -> Any:
    """A real S3 client against moto, with the EIF bucket the stack made."""
    client = boto3_session.client("s3", endpoint_url=moto_reset)
    client.create_bucket(Bucket=EIF_BUCKET)
    return client


def make_logs_bucket(s3: Any) -> str:
    """The new stack's access-log bucket in moto, with the delivery policy the stack gives it
    (moto refuses PutBucketLogging to a bucket S3 could not deliver to)."""
    name = OUTPUTS["LogsBucketName"]
    s3.create_bucket(Bucket=name)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "logging.s3.amazonaws.com"},
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{name}/*",
                "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}},
            }
        ],
    }
    s3.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
    return name
