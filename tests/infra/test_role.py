"""The host role: in KMS only a narrow CreateKey, parameters and buckets scoped, no managed
policy."""

from __future__ import annotations

from tests.infra.synthesis import (
    ACCOUNT,
    PLAINTEXT_ACTIONS,
    REGION,
    Synthesized,
    allows,
    as_list,
    attestation_conditioned,
    iam_statements,
    text,
)

#: KMS actions the role must never get from IAM (the key policies grant what it needs).
KEY_ACTIONS = (
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:Encrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:CreateGrant",
    "kms:TagResource",
    "kms:ScheduleKeyDeletion",
    "kms:ReplicateKey",
    "kms:ImportKeyMaterial",
)


def test_no_identity_policy_allows_plaintext_without_attestation(single: Synthesized) -> None:
    statements = iam_statements(single.template)
    assert statements, "the host role must have its inline policy"
    for statement in statements:
        assert "NotAction" not in statement and "NotResource" not in statement, statement
        for action in (*PLAINTEXT_ACTIONS, "kms:Anything"):
            if allows(statement, action):
                assert attestation_conditioned(statement), (action, statement)
    # Stronger: no KMS action but CreateKey; the key policies name the role itself.
    for statement in statements:
        for action in (*KEY_ACTIONS, "kms:Anything"):
            assert not allows(statement, action), (action, statement)


def test_the_only_kms_permission_is_create_key_for_single_region_symmetric_keys(
    single: Synthesized,
) -> None:
    kms = [
        s
        for s in iam_statements(single.template)
        if any(str(a).lower().startswith("kms:") for a in as_list(s.get("Action", [])))
    ]
    assert kms == [
        {
            "Sid": "MigrationCreateKey",
            "Effect": "Allow",
            "Action": "kms:CreateKey",
            "Resource": "*",
            "Condition": {
                "StringEquals": {
                    "kms:KeyOrigin": "AWS_KMS",
                    "kms:KeySpec": "SYMMETRIC_DEFAULT",
                    "kms:KeyUsage": "ENCRYPT_DECRYPT",
                },
                "Bool": {"kms:MultiRegion": "false"},
            },
        }
    ]
    # AwsKms.create_key sends KeySpec SYMMETRIC_DEFAULT, KeyUsage ENCRYPT_DECRYPT and no Origin
    # or MultiRegion (their defaults AWS_KMS, false): tests/plugins/test_aws_kms.py checks that.


def test_no_managed_policy_is_attached(single: Synthesized) -> None:
    for resource in single.template["Resources"].values():
        assert "ManagedPolicyArns" not in resource.get("Properties", {}), resource
    assert not single.of_type("AWS::IAM::Policy") and not single.of_type("AWS::IAM::ManagedPolicy")


def test_parameter_actions_are_scoped_to_the_apps_path(single: Synthesized) -> None:
    parameter_actions = [
        s
        for s in iam_statements(single.template)
        if any(a.startswith("ssm:") and "Parameter" in a for a in as_list(s["Action"]))
    ]
    granted = {a for s in parameter_actions for a in as_list(s["Action"])}
    assert granted == {
        "ssm:GetParameter",
        "ssm:GetParameters",
        "ssm:PutParameter",
        "ssm:DeleteParameter",
        "ssm:GetParametersByPath",
    }
    prefix = "arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:parameter"
    for statement in parameter_actions:
        for resource in as_list(statement["Resource"]):
            assert text(resource) in (f"{prefix}/dev/hello/*", f"{prefix}/dev/hello"), statement
            if text(resource) == f"{prefix}/dev/hello":
                assert as_list(statement["Action"]) == ["ssm:GetParametersByPath"]


def test_s3_actions_are_scoped_to_the_storage_prefix_and_the_eif_objects(
    single: Synthesized,
) -> None:
    storage_id = next(
        k
        for k, r in single.of_type("AWS::S3::Bucket").items()
        if r["Properties"].get("BucketName") == "hello-data-bucket"
    )
    eif_id = next(
        k
        for k, r in single.of_type("AWS::S3::Bucket").items()
        if r["Properties"].get("BucketName") == f"dev-hello-eif-{ACCOUNT}-{REGION}"
    )
    grants = {
        (action, text(resource))
        for s in iam_statements(single.template)
        for action in as_list(s["Action"])
        if action.startswith("s3:")
        for resource in as_list(s["Resource"])
    }
    assert grants == {
        ("s3:GetObject", f"<{storage_id}.Arn>/hello/*"),
        ("s3:PutObject", f"<{storage_id}.Arn>/hello/*"),
        ("s3:DeleteObject", f"<{storage_id}.Arn>/hello/*"),
        ("s3:ListBucket", f"<{storage_id}.Arn>"),
        ("s3:GetObject", f"<{eif_id}.Arn>/image.eif"),
        ("s3:GetObject", f"<{eif_id}.Arn>/wheels/*"),
        ("s3:ListBucket", f"<{eif_id}.Arn>"),
    }


def test_wildcard_resources_are_only_the_run_command_channels_and_create_key(
    single: Synthesized,
) -> None:
    for statement in iam_statements(single.template):
        if "*" in as_list(statement["Resource"]):
            actions = as_list(statement["Action"])
            if actions == ["kms:CreateKey"]:
                assert statement["Condition"], statement  # the conditioned CreateKey only
                continue
            assert all(a.split(":")[0] in ("ssmmessages", "ec2messages") for a in actions)
