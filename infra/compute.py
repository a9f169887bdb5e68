"""The enclave hosts: one EC2 instance, or an auto-scaling group behind a network load balancer.

Both run the same machine: Nitro Enclaves enabled, IMDSv2 with hop limit 1, an encrypted gp3
root volume, Amazon Linux 2023, no public IP, no SSH key, the user data of
:mod:`enclave_infra.user_data`. The security group admits the ingress ports from inside the VPC;
scaled out, an internal load balancer forwards TCP and checks ``/health``
(docs/architecture.md, "The CDK stack").
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from constructs import Construct
from enclave_infra.instances import enclave_instance
from enclave_infra.nag import acknowledge

from enclave_core.config import Config

__all__ = ["ROOT_VOLUME_GIB", "HostSettings", "ingress_ports", "scaled_hosts", "single_host"]

ROOT_VOLUME_GIB = 30
#: How long a new host may take (packages, waiting for the EIF, enclave boot) before the group
#: acts on load-balancer health.
HEALTH_GRACE = Duration.minutes(20)
#: How long a rolling update waits after replacing one host before the next.
ROLLING_PAUSE = Duration.minutes(10)


def ingress_ports(config: Config) -> list[int]:
    """The host TCP ports of ``supervisor.ingress`` (``listen`` addresses' ports), sorted."""
    return sorted({int(i.listen.rpartition(":")[2]) for i in config.supervisor.ingress})


class HostSettings:
    """What every host gets: type, image, user data, role, security group, root volume."""

    def __init__(
        self,
        scope: Construct,
        config: Config,
        *,
        vpc: ec2.IVpc,
        vpc_cidr: str,
        role: iam.IRole,
        script: str,
    ) -> None:
        spec = enclave_instance(config.instance_type)
        arm = spec.architecture == "arm64"
        self.instance_type = ec2.InstanceType(spec.name)
        self.machine_image = ec2.MachineImage.latest_amazon_linux2023(
            cpu_type=ec2.AmazonLinuxCpuType.ARM_64 if arm else ec2.AmazonLinuxCpuType.X86_64
        )
        self.user_data = ec2.UserData.custom(script)
        self.role = role
        self.security_group = ec2.SecurityGroup(
            scope,
            "HostSecurityGroup",
            vpc=vpc,
            description="Enclave hosts: ingress ports from the VPC, HTTPS out",
            allow_all_outbound=False,
        )
        for port in ingress_ports(config):
            self.security_group.add_ingress_rule(
                ec2.Peer.ipv4(vpc_cidr), ec2.Port.tcp(port), f"ingress {port} from VPC"
            )
        # AWS endpoints (interface: in the VPC; S3: gateway prefix list) all answer on 443.
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS out")
        self.block_devices = [
            ec2.BlockDevice(
                device_name="/dev/xvda",
                volume=ec2.BlockDeviceVolume.ebs(
                    ROOT_VOLUME_GIB,
                    encrypted=True,
                    volume_type=ec2.EbsDeviceVolumeType.GP3,
                    delete_on_termination=True,
                ),
            )
        ]


def single_host(scope: Construct, settings: HostSettings, *, vpc: ec2.IVpc) -> ec2.Instance:
    """One enclave-enabled instance in the first isolated subnet.

    A change of user data (enclave.yaml) replaces the instance: user data runs on first boot
    only, and the host keeps no state of its own (it is in the parameters, bucket and key).
    """
    instance = ec2.Instance(
        scope,
        "Host",
        vpc=vpc,
        vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
        instance_type=settings.instance_type,
        machine_image=settings.machine_image,
        user_data=settings.user_data,
        user_data_causes_replacement=True,
        role=settings.role,
        security_group=settings.security_group,
        block_devices=settings.block_devices,
        enclave_enabled=True,
        http_endpoint=True,
        http_tokens=ec2.HttpTokens.REQUIRED,  # IMDSv2 only
        http_put_response_hop_limit=1,
        associate_public_ip_address=False,
        detailed_monitoring=True,
    )
    acknowledge(
        instance,
        "EC29",
        "Termination protection would make `enclave destroy` (cdk destroy) fail; the "
        "host holds no state (parameters, bucket and key are retained) and a user-data "
        "change must be able to replace it.",
    )
    return instance


def scaled_hosts(
    scope: Construct, config: Config, settings: HostSettings, *, vpc: ec2.IVpc
) -> tuple[autoscaling.AutoScalingGroup, elbv2.NetworkLoadBalancer]:
    """``config.instances`` hosts from one launch template, behind an internal NLB."""
    template = ec2.LaunchTemplate(
        scope,
        "HostTemplate",
        instance_type=settings.instance_type,
        machine_image=settings.machine_image,
        user_data=settings.user_data,
        role=settings.role,
        security_group=settings.security_group,
        block_devices=settings.block_devices,
        nitro_enclave_enabled=True,
        http_endpoint=True,
        http_tokens=ec2.LaunchTemplateHttpTokens.REQUIRED,  # IMDSv2 only
        http_put_response_hop_limit=1,
        associate_public_ip_address=False,
        detailed_monitoring=True,
    )
    group = autoscaling.AutoScalingGroup(
        scope,
        "Hosts",
        vpc=vpc,
        vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
        launch_template=template,
        min_capacity=config.instances,
        max_capacity=config.instances,
        desired_capacity=config.instances,
        health_checks=autoscaling.HealthChecks.with_additional_checks(
            additional_types=[autoscaling.AdditionalHealthCheckType.ELB],
            grace_period=HEALTH_GRACE,
        ),
        # A new launch template version (enclave.yaml changed) replaces one host at a time,
        # giving each new host time to boot its enclave before the next goes.
        update_policy=autoscaling.UpdatePolicy.rolling_update(
            max_batch_size=1,
            min_instances_in_service=config.instances - 1,
            pause_time=ROLLING_PAUSE,
        ),
    )
    acknowledge(
        group,
        "AS3",
        "The group's size is fixed (min = max = desired = instances); the only "
        "scaling events are replacements of unhealthy hosts, recorded in the group's "
        "activity history and CloudTrail; `enclave status` reports every host.",
    )
    balancer = elbv2.NetworkLoadBalancer(
        scope,
        "LoadBalancer",
        vpc=vpc,
        internet_facing=False,
        vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
        cross_zone_enabled=True,
    )
    acknowledge(
        balancer,
        "ELB2",
        "A network load balancer writes access logs only for TLS listeners; these "
        "listeners are TCP on purpose (TLS terminates inside the enclave, so neither the "
        "balancer nor the host sees plaintext). The VPC flow log records its connections.",
    )
    for port in ingress_ports(config):
        listener = balancer.add_listener(f"Listener{port}", port=port, protocol=elbv2.Protocol.TCP)
        listener.add_targets(
            f"Hosts{port}",
            port=port,
            protocol=elbv2.Protocol.TCP,
            targets=[group],
            health_check=_health_check(config, port),
        )
    return group, balancer


def _health_check(config: Config, port: int) -> elbv2.HealthCheck:
    """``/health`` of the runtime on the port that reaches it, TCP on the others."""
    reaches_runtime = any(
        i.port == config.runtime.port and i.listen.endswith(f":{port}")
        for i in config.supervisor.ingress
    )
    if not reaches_runtime:
        return elbv2.HealthCheck(protocol=elbv2.Protocol.TCP, interval=Duration.seconds(30))
    protocol = elbv2.Protocol.HTTPS if config.runtime.tls else elbv2.Protocol.HTTP
    return elbv2.HealthCheck(
        protocol=protocol, path="/health", healthy_http_codes="200", interval=Duration.seconds(30)
    )
