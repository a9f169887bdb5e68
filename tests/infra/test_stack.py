"""EnclaveStack, one host: every resource, network, buckets, instance, outputs, cdk-nag.

The key policy is checked in test_key.py, the host role in test_role.py.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from aws_cdk.assertions import Template

from tests.infra.synthesis import (
    ACCOUNT,
    REGION,
    Synthesized,
    text,
)

# ------------------------------------------------------------------ resources


def test_every_resource_of_the_single_host_stack(single: Synthesized) -> None:
    assert single.stack.stack_name == "devNitrohello"
    assert dict(single.counts()) == {
        "AWS::EC2::VPC": 1,
        "AWS::EC2::Subnet": 1,
        "AWS::EC2::RouteTable": 1,
        "AWS::EC2::SubnetRouteTableAssociation": 1,
        "AWS::EC2::FlowLog": 1,
        "AWS::EC2::VPCEndpoint": 6,
        "AWS::EC2::SecurityGroup": 2,
        "AWS::S3::Bucket": 3,
        "AWS::S3::BucketPolicy": 3,
        "AWS::IAM::Role": 1,
        "AWS::IAM::InstanceProfile": 1,
        "AWS::KMS::Key": 1,
        "AWS::SSM::Parameter": 1,
        "AWS::EC2::Instance": 1,
    }
    # Nothing that would reach or be reached from the internet, and no Lambda-backed helpers.
    for kind in ("InternetGateway", "NatGateway", "EIP"):
        assert not single.of_type(f"AWS::EC2::{kind}")


def test_the_network_is_isolated_with_endpoints_for_kms_ssm_sts_and_s3(
    single: Synthesized,
) -> None:
    template = Template.from_json(single.template)
    template.has_resource_properties("AWS::EC2::Subnet", {"MapPublicIpOnLaunch": False})
    interface = {
        text(r["Properties"]["ServiceName"]): r["Properties"]
        for r in single.of_type("AWS::EC2::VPCEndpoint").values()
        if r["Properties"]["VpcEndpointType"] == "Interface"
    }
    assert sorted(interface) == [
        f"com.amazonaws.{REGION}.{s}" for s in ("ec2messages", "kms", "ssm", "ssmmessages", "sts")
    ]
    assert all(p["PrivateDnsEnabled"] is True for p in interface.values())
    gateway = [
        r
        for r in single.of_type("AWS::EC2::VPCEndpoint").values()
        if r["Properties"]["VpcEndpointType"] == "Gateway"
    ]
    assert [text(g["Properties"]["ServiceName"]) for g in gateway] == [
        "com.amazonaws.<AWS::Region>.s3"
    ]
    _, flow = single.one("AWS::EC2::FlowLog")
    assert flow["Properties"]["TrafficType"] == "ALL"
    assert flow["Properties"]["LogDestinationType"] == "s3"


def test_security_groups_admit_only_the_ingress_port_and_https_from_the_vpc(
    single: Synthesized,
) -> None:
    rules = [
        rule
        for group in single.of_type("AWS::EC2::SecurityGroup").values()
        for rule in group["Properties"].get("SecurityGroupIngress", [])
    ]
    assert sorted((r["FromPort"], r["ToPort"], r["CidrIp"]) for r in rules) == [
        (443, 443, "10.80.0.0/16"),  # the endpoints: HTTPS from the VPC
        (443, 443, "10.80.0.0/16"),  # the host: supervisor.ingress 0.0.0.0:443, from the VPC
    ]
    assert not single.of_type("AWS::EC2::SecurityGroupIngress")


# ------------------------------------------------------------------ buckets


def test_every_bucket_is_versioned_encrypted_private_tls_only_and_retained(
    single: Synthesized,
) -> None:
    buckets = single.of_type("AWS::S3::Bucket")
    policies = {
        text(p["Properties"]["Bucket"]): p["Properties"]["PolicyDocument"]["Statement"]
        for p in single.of_type("AWS::S3::BucketPolicy").values()
    }
    assert len(buckets) == 3
    for logical_id, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
        ]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
        assert bucket["DeletionPolicy"] == "Retain"
        deny = [s for s in policies[f"<{logical_id}>"] if s["Effect"] == "Deny"]
        assert deny == [
            {
                "Action": "s3:*",
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                "Effect": "Deny",
                "Principal": {"AWS": "*"},
                "Resource": [
                    {"Fn::GetAtt": [logical_id, "Arn"]},
                    {"Fn::Join": ["", [{"Fn::GetAtt": [logical_id, "Arn"]}, "/*"]]},
                ],
            }
        ]


def test_storage_and_eif_buckets_log_their_access(single: Synthesized) -> None:
    logged = {
        r["Properties"].get("BucketName"): r["Properties"].get("LoggingConfiguration")
        for r in single.of_type("AWS::S3::Bucket").values()
    }
    logs_id = next(
        k
        for k, r in single.of_type("AWS::S3::Bucket").items()
        if "LoggingConfiguration" not in r["Properties"]
    )
    assert logged["hello-data-bucket"] == {
        "DestinationBucketName": {"Ref": logs_id},
        "LogFilePrefix": "storage/",
    }
    assert logged[f"dev-hello-eif-{ACCOUNT}-{REGION}"] == {
        "DestinationBucketName": {"Ref": logs_id},
        "LogFilePrefix": "eif/",
    }


# ------------------------------------------------------------------ the host


def test_the_instance_is_enclave_enabled_imdsv2_only_encrypted_and_private(
    single: Synthesized,
) -> None:
    _, instance = single.one("AWS::EC2::Instance")
    props = instance["Properties"]
    assert props["EnclaveOptions"] == {"Enabled": True}
    assert props["MetadataOptions"] == {
        "HttpEndpoint": "enabled",
        "HttpPutResponseHopLimit": 1,
        "HttpTokens": "required",
    }
    assert props["BlockDeviceMappings"] == [
        {
            "DeviceName": "/dev/xvda",
            "Ebs": {
                "DeleteOnTermination": True,
                "Encrypted": True,
                "VolumeSize": 30,
                "VolumeType": "gp3",
            },
        }
    ]
    assert props["InstanceType"] == "m6i.xlarge"
    assert [n["AssociatePublicIpAddress"] for n in props["NetworkInterfaces"]] == [False]
    assert "KeyName" not in props
    image = single.template["Parameters"][props["ImageId"]["Ref"]]
    assert image["Default"] == "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"


def test_user_data_installs_the_host_and_starts_the_supervisor(single: Synthesized) -> None:
    _, instance = single.one("AWS::EC2::Instance")
    eif_id = next(
        k
        for k, r in single.of_type("AWS::S3::Bucket").items()
        if r["Properties"].get("BucketName", "").endswith(f"-eif-{ACCOUNT}-{REGION}")
    )
    script = text(instance["Properties"]["UserData"]["Fn::Base64"])
    assert script.startswith("#!/bin/bash\n")
    assert f"BUCKET='<{eif_id}>'" in script
    order = [
        "dnf install -y aws-nitro-enclaves-cli",
        'pip" install --no-index --find-links',
        'base64 -d > "$APP/enclave.yaml"',
        'aws s3 cp --only-show-errors "s3://$BUCKET/image.eif" '
        "/opt/simple-enclave/app/artifacts/image.eif",
        'enclave" host install -c "$APP/enclave.yaml"',
        "systemctl enable --now enclave-supervisor",
    ]
    positions = [script.index(step) for step in order]
    assert positions == sorted(positions)
    encoded = re.search(r"echo (\S+) \| base64 -d", script)
    assert encoded is not None
    written = base64.b64decode(encoded.group(1)).decode()
    assert single.config.path is not None
    assert written == single.config.path.read_text()


# ------------------------------------------------------------------ outputs, cdk-nag


def test_outputs_for_deploy_status_and_destroy(single: Synthesized) -> None:
    outputs = single.template["Outputs"]
    assert {
        "InstanceID",
        "EC2InstanceRoleARN",
        "KMSKeyID",
        "StorageBucketName",
        "EifBucketName",
        "LockedPCR0",
    } <= set(outputs)
    assert "LoadBalancerDNS" not in outputs and "AutoScalingGroupName" not in outputs
    instance_id, _ = single.one("AWS::EC2::Instance")
    key_id, _ = single.one("AWS::KMS::Key")
    assert outputs["InstanceID"]["Value"] == {"Ref": instance_id}
    assert outputs["KMSKeyID"]["Value"] == {"Ref": key_id}
    role_id, _ = single.one("AWS::IAM::Role")
    assert outputs["EC2InstanceRoleARN"]["Value"] == {"Fn::GetAtt": [role_id, "Arn"]}


def test_cdk_nag_aws_solutions_finds_nothing_unacknowledged(single: Synthesized) -> None:
    # synthesize_checked raises on an error; warnings would be listed as violations too.
    (report,) = single.report["pluginReports"]
    assert (report["pluginName"], report["conclusion"], report["violations"]) == (
        "AwsSolutions",
        "success",
        [],
    )


def test_every_acknowledged_finding_is_justified_in_code(single: Synthesized) -> None:
    (report,) = single.report["pluginReports"]
    suppressed = {v["ruleName"]: v["reason"] for v in report["suppressedViolations"]}
    assert sorted(suppressed) == [
        "AwsSolutions-EC29",
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::<EnclaveEif42C4BD7C.Arn>/wheels/*]",
        "AwsSolutions-IAM5[Resource::<EnclaveStorage9D80C79F.Arn>/hello/*]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:"
        "instance/*]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:"
        "parameter/dev/hello/*]",
    ]
    for rule, reason in suppressed.items():
        assert len(reason) > 80, (rule, reason)
    # No acknowledgment in code that suppresses nothing (it would hide a future finding).
    acknowledged = {rule for entries in single.acknowledgments().values() for rule, _ in entries}
    assert acknowledged == set(suppressed)


def test_cdk_nag_would_fail_the_synthesis_of_a_violation(tmp_path: Path) -> None:
    """The harness itself: an unacknowledged finding makes synthesis raise."""
    from aws_cdk import App, Stack, Validations
    from aws_cdk import aws_s3 as s3
    from cdk_nag import AwsSolutionsChecks

    app = App(outdir=str(tmp_path))
    s3.Bucket(Stack(app, "Plain"), "Bucket")
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(RuntimeError, match="AwsSolutions-S10"):
        app.synth()
