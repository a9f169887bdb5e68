"""``EnclaveService``: everything one Simple Enclave deployment needs, as one reusable construct.

``EnclaveService(stack, "Enclave", config=load_config("enclave.yaml"), pcr0=PCR0)`` in your own
CDK app (``pip install 'simple-enclave[infra]'``) creates the access-log bucket, the VPC (or uses
``vpc=``), the storage and EIF buckets, the host role, the KMS key locked to ``pcr0``
(:mod:`enclave_infra.key`), the ``KMSKeyID`` parameter and the hosts
(:mod:`enclave_infra.compute`). :class:`~enclave_infra.stack.EnclaveStack` adds the outputs.
"""

from __future__ import annotations

import yaml
from aws_cdk import Aws, RemovalPolicy
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_ssm as ssm
from constructs import Construct
from enclave_infra import naming
from enclave_infra.buckets import hardened_bucket, logs_bucket
from enclave_infra.compute import HostSettings, scaled_hosts, single_host
from enclave_infra.key import enclave_key_policy, normalize_pcr0
from enclave_infra.network import VPC_CIDR, build_vpc
from enclave_infra.role import instance_role
from enclave_infra.user_data import host_script

from enclave_core.config import Config, effective_config

__all__ = ["KMS_KEY_PARAMETER", "EnclaveService", "config_text"]

#: CDK feature flags the construct relies on, set on its own subtree: server access logs are
#: delivered under a bucket policy, not the log-delivery ACL (ACLs stay disabled everywhere).
FEATURE_FLAGS = {"@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True}
#: The parameter (relative to ``/{prefix}/{name}/``) naming the enclave's key (README: Migration).
KMS_KEY_PARAMETER = "KMSKeyID"


def config_text(config: Config) -> str:
    """enclave.yaml as the hosts get it: the file itself, or the effective configuration."""
    if config.path is not None and config.path.is_file():
        return config.path.read_text(encoding="utf-8")
    return yaml.safe_dump(effective_config(config), sort_keys=False)


class EnclaveService(Construct):
    """A Simple Enclave deployment: network, buckets, role, locked key, parameter and hosts.

    Attributes: ``vpc``, ``logs_bucket``, ``storage_bucket``, ``eif_bucket``, ``role``, ``key``
    (the L1 ``AWS::KMS::Key``: its policy is set exactly, see :mod:`enclave_infra.key`),
    ``key_parameter``, ``pcr0``, and either ``instance`` or ``group`` and ``load_balancer``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: Config,
        pcr0: str,
        vpc: ec2.IVpc | None = None,
    ) -> None:
        """Build the deployment of ``config`` for the image whose PCR0 is ``pcr0``.

        :param vpc: an existing VPC with isolated subnets and the endpoints of
            :mod:`enclave_infra.network`; default: a new one.
        :raises ConfigError: for an instance type without Nitro Enclaves or an invalid PCR0.
        """
        super().__init__(scope, construct_id)
        for flag, value in FEATURE_FLAGS.items():
            self.node.set_context(flag, value)
        self.config = config
        self.pcr0 = normalize_pcr0(pcr0)
        self.logs_bucket = logs_bucket(self, "AccessLogs")
        self.vpc: ec2.IVpc = vpc or build_vpc(
            self, "Network", max_azs=1 if config.instances == 1 else 2, logs=self.logs_bucket
        )
        vpc_cidr = self.vpc.vpc_cidr_block if vpc is not None else VPC_CIDR
        self.storage_bucket = hardened_bucket(
            self,
            "Storage",
            bucket_name=naming.storage_bucket_name(config),
            logs=self.logs_bucket,
            logs_prefix="storage/",
        )
        self.eif_bucket = hardened_bucket(
            self,
            "Eif",
            bucket_name=naming.eif_bucket_name(config),
            logs=self.logs_bucket,
            logs_prefix="eif/",
        )
        self.role: iam.Role = instance_role(
            self,
            "HostRole",
            parameter_path=naming.parameter_path(config),
            storage=self.storage_bucket,
            storage_prefix=naming.storage_prefix(config),
            eif=self.eif_bucket,
        )
        self.key = self._key()
        self.key_parameter = ssm.StringParameter(
            self,
            "KmsKeyIdParameter",
            parameter_name=f"{naming.parameter_path(config)}/{KMS_KEY_PARAMETER}",
            string_value=self.key.ref,
            description="The enclave's KMS key (README: Migration); enclave migrate switches it",
        )
        script = host_script(
            config,
            config_text(config),
            bucket=self.eif_bucket.bucket_name,
            eif_path=str(naming.host_eif_path(config)),
        )
        settings = HostSettings(
            self, config, vpc=self.vpc, vpc_cidr=vpc_cidr, role=self.role, script=script
        )
        self.instance: ec2.Instance | None = None
        self.group: autoscaling.AutoScalingGroup | None = None
        self.load_balancer: elbv2.NetworkLoadBalancer | None = None
        if config.instances == 1:
            self.instance = single_host(self, settings, vpc=self.vpc)
        else:
            self.group, self.load_balancer = scaled_hosts(self, config, settings, vpc=self.vpc)

    def _key(self) -> kms.CfnKey:
        policy = enclave_key_policy(
            pcr0_hex=self.pcr0,
            role_arn=self.role.role_arn,
            account_root_arn=f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:root",
        )
        key = kms.CfnKey(
            self,
            "Key",
            description=f"{self.config.name} enclave key ({self.config.prefix}), decrypts only "
            f"for PCR0 {self.pcr0[:16]}...",
            key_policy=policy,
            enable_key_rotation=True,
            # The deploying principal is (on purpose) not allowed to change the policy later.
            bypass_policy_lockout_safety_check=True,
            pending_window_in_days=30,
        )
        key.apply_removal_policy(RemovalPolicy.RETAIN)
        return key
