"""The enclave's network: a VPC of isolated private subnets, reaching AWS through VPC endpoints.

No internet gateway, NAT or public IP: interface endpoints for KMS, SSM (with Run Command's) and
STS, a gateway endpoint for S3, flow logs to the access-log bucket. Costs:
docs/architecture.md, "The CDK stack".
"""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_s3 as s3
from constructs import Construct

__all__ = ["INTERFACE_ENDPOINTS", "VPC_CIDR", "build_vpc"]

#: The VPC's address range (a literal, so rules and checks can read it at synthesis).
VPC_CIDR = "10.80.0.0/16"

#: Interface endpoints, by construct id.
INTERFACE_ENDPOINTS: dict[str, ec2.InterfaceVpcEndpointAwsService] = {
    "KmsEndpoint": ec2.InterfaceVpcEndpointAwsService.KMS,
    "SsmEndpoint": ec2.InterfaceVpcEndpointAwsService.SSM,
    "SsmMessagesEndpoint": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    "Ec2MessagesEndpoint": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
    "StsEndpoint": ec2.InterfaceVpcEndpointAwsService.STS,
}


def build_vpc(scope: Construct, construct_id: str, *, max_azs: int, logs: s3.IBucket) -> ec2.Vpc:
    """The VPC with its subnets, endpoints and flow log.

    :param max_azs: availability zones (and isolated subnets) to span. The zones are the
        region's first ones as CloudFormation lists them at deploy time (``Fn::GetAZs``), so the
        template needs no account lookup.
    :param logs: where the flow log delivers (prefix ``vpc-flow-logs/``).
    """
    vpc = ec2.Vpc(
        scope,
        construct_id,
        max_azs=max_azs,
        nat_gateways=0,
        create_internet_gateway=False,
        ip_addresses=ec2.IpAddresses.cidr(VPC_CIDR),
        subnet_configuration=[
            ec2.SubnetConfiguration(
                name="Enclave", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
            )
        ],
        gateway_endpoints={
            "S3Endpoint": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)
        },
        # Nothing is placed in the VPC's default security group, so its default rules reach
        # nothing; stripping them would take a Lambda-backed custom resource (a code asset).
        restrict_default_security_group=False,
    )
    vpc.add_flow_log(
        "FlowLog",
        destination=ec2.FlowLogDestination.to_s3(logs, "vpc-flow-logs/"),
        traffic_type=ec2.FlowLogTrafficType.ALL,
    )
    endpoints = ec2.SecurityGroup(
        scope,
        "EndpointSecurityGroup",
        vpc=vpc,
        description="AWS service endpoints: HTTPS from inside the VPC",
        allow_all_outbound=False,
    )
    endpoints.add_ingress_rule(ec2.Peer.ipv4(VPC_CIDR), ec2.Port.tcp(443), "HTTPS from the VPC")
    for endpoint_id, service in INTERFACE_ENDPOINTS.items():
        vpc.add_interface_endpoint(
            endpoint_id,
            service=service,
            private_dns_enabled=True,
            open=False,
            security_groups=[endpoints],
        )
    return vpc
