"""EnclaveStack with ``instances: 3``: an auto-scaling group behind an internal NLB."""

from __future__ import annotations

from tests.infra.synthesis import (
    PCR0,
    Synthesized,
    allows,
    attestation_conditioned,
    iam_statements,
    text,
)


def test_every_resource_of_the_scaled_out_stack(scaled: Synthesized) -> None:
    assert dict(scaled.counts()) == {
        "AWS::EC2::VPC": 1,
        "AWS::EC2::Subnet": 2,
        "AWS::EC2::RouteTable": 2,
        "AWS::EC2::SubnetRouteTableAssociation": 2,
        "AWS::EC2::FlowLog": 1,
        "AWS::EC2::VPCEndpoint": 6,
        "AWS::EC2::SecurityGroup": 2,
        "AWS::S3::Bucket": 3,
        "AWS::S3::BucketPolicy": 3,
        "AWS::IAM::Role": 1,
        "AWS::IAM::InstanceProfile": 1,
        "AWS::KMS::Key": 1,
        "AWS::SSM::Parameter": 1,
        "AWS::EC2::LaunchTemplate": 1,
        "AWS::AutoScaling::AutoScalingGroup": 1,
        "AWS::ElasticLoadBalancingV2::LoadBalancer": 1,
        "AWS::ElasticLoadBalancingV2::Listener": 2,
        "AWS::ElasticLoadBalancingV2::TargetGroup": 2,
    }


def test_the_launch_template_has_the_single_hosts_hardening(scaled: Synthesized) -> None:
    _, template = scaled.one("AWS::EC2::LaunchTemplate")
    data = template["Properties"]["LaunchTemplateData"]
    assert data["EnclaveOptions"] == {"Enabled": True}
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert data["BlockDeviceMappings"][0]["Ebs"] == {
        "DeleteOnTermination": True,
        "Encrypted": True,
        "VolumeSize": 30,
        "VolumeType": "gp3",
    }
    assert data["InstanceType"] == "c7g.2xlarge"
    assert [n["AssociatePublicIpAddress"] for n in data["NetworkInterfaces"]] == [False]
    image = scaled.template["Parameters"][data["ImageId"]["Ref"]]
    assert image["Default"].endswith("al2023-ami-kernel-6.1-arm64")  # Graviton
    script = text(data["UserData"]["Fn::Base64"])
    assert "systemctl enable --now enclave-supervisor" in script


def test_the_group_has_a_fixed_size_and_replaces_unhealthy_hosts(scaled: Synthesized) -> None:
    _, group = scaled.one("AWS::AutoScaling::AutoScalingGroup")
    props = group["Properties"]
    assert (props["MinSize"], props["MaxSize"], props["DesiredCapacity"]) == ("3", "3", "3")
    assert props["HealthCheckType"] == "ELB"
    assert props["HealthCheckGracePeriod"] == 1200
    assert len(props["VPCZoneIdentifier"]) == 2
    assert sorted(text(t) for t in props["TargetGroupARNs"]) == sorted(
        f"<{k}>" for k in scaled.of_type("AWS::ElasticLoadBalancingV2::TargetGroup")
    )
    assert group["UpdatePolicy"]["AutoScalingRollingUpdate"]["MaxBatchSize"] == 1
    assert group["UpdatePolicy"]["AutoScalingRollingUpdate"]["MinInstancesInService"] == 2


def test_an_internal_nlb_forwards_each_ingress_port_over_tcp(scaled: Synthesized) -> None:
    _, balancer = scaled.one("AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert balancer["Properties"]["Type"] == "network"
    assert balancer["Properties"]["Scheme"] == "internal"
    listeners = scaled.of_type("AWS::ElasticLoadBalancingV2::Listener").values()
    assert sorted(
        (lst["Properties"]["Port"], lst["Properties"]["Protocol"]) for lst in listeners
    ) == [
        (443, "TCP"),
        (9443, "TCP"),
    ]
    checks = {
        g["Properties"]["Port"]: (
            g["Properties"]["Protocol"],
            g["Properties"]["HealthCheckProtocol"],
            g["Properties"].get("HealthCheckPath"),
        )
        for g in scaled.of_type("AWS::ElasticLoadBalancingV2::TargetGroup").values()
    }
    assert checks == {443: ("TCP", "HTTPS", "/health"), 9443: ("TCP", "TCP", None)}


def test_hosts_admit_both_ingress_ports_from_the_vpc_only(scaled: Synthesized) -> None:
    rules = [
        (r["FromPort"], r["CidrIp"])
        for g in scaled.of_type("AWS::EC2::SecurityGroup").values()
        for r in g["Properties"].get("SecurityGroupIngress", [])
    ]
    assert sorted(rules) == [(443, "10.80.0.0/16"), (443, "10.80.0.0/16"), (9443, "10.80.0.0/16")]


def test_all_hosts_share_one_locked_key_one_parameter_and_the_buckets(scaled: Synthesized) -> None:
    _, key = scaled.one("AWS::KMS::Key")
    policy = key["Properties"]["KeyPolicy"]
    [decrypt] = [s for s in policy["Statement"] if s["Sid"] == "EnclaveDecryptWithAttestation"]
    condition = decrypt["Condition"]["StringEqualsIgnoreCase"]
    assert condition == {"kms:RecipientAttestation:PCR0": PCR0}
    assert [s["Sid"] for s in policy["Statement"]] == [
        "EnclaveDecryptWithAttestation",
        "EnclaveReadKey",
        "AllowKeyDeletion",
        "AccountAdministrationWithoutKeyUse",
    ]
    # test_key.py runs the runtime's exact check on the policy with its tokens resolved.
    _, parameter = scaled.one("AWS::SSM::Parameter")
    assert parameter["Properties"]["Name"] == "/dev/hello/KMSKeyID"
    for statement in iam_statements(scaled.template):
        if allows(statement, "kms:Decrypt") or allows(statement, "kms:GenerateDataKey"):
            assert attestation_conditioned(statement), statement


def test_outputs_name_the_group_and_the_load_balancer(scaled: Synthesized) -> None:
    outputs = scaled.template["Outputs"]
    assert "InstanceID" not in outputs
    balancer_id, _ = scaled.one("AWS::ElasticLoadBalancingV2::LoadBalancer")
    group_id, _ = scaled.one("AWS::AutoScaling::AutoScalingGroup")
    assert outputs["LoadBalancerDNS"]["Value"] == {"Fn::GetAtt": [balancer_id, "DNSName"]}
    assert outputs["AutoScalingGroupName"]["Value"] == {"Ref": group_id}
    assert {"EC2InstanceRoleARN", "KMSKeyID", "StorageBucketName", "EifBucketName"} <= set(outputs)


def test_cdk_nag_is_clean_with_justified_acknowledgments(scaled: Synthesized) -> None:
    (report,) = scaled.report["pluginReports"]
    assert (report["conclusion"], report["violations"]) == ("success", [])
    suppressed = {v["ruleName"]: v["reason"] for v in report["suppressedViolations"]}
    assert {"AwsSolutions-AS3", "AwsSolutions-ELB2"} <= set(suppressed)
    assert "AwsSolutions-EC29" not in suppressed  # no standalone instance here
    assert all(len(reason) > 80 for reason in suppressed.values())
    acknowledged = {rule for entries in scaled.acknowledgments().values() for rule, _ in entries}
    assert acknowledged == set(suppressed)
