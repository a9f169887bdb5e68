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
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_ssm as ssm
from constructs import Construct
from enclave_infra import naming
from enclave_infra.buckets import adopted_bucket, hardened_bucket, logs_bucket
from enclave_infra.compute import HostSettings, scaled_hosts, single_host
from enclave_infra.key import enclave_key_policy, normalize_pcr0
from enclave_infra.nag import acknowledge
from enclave_infra.network import VPC_CIDR, build_vpc
from enclave_infra.role import instance_role
from enclave_infra.user_data import host_script

from enclave_core.config import Config, effective_config
from enclave_core.errors import ConfigError

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
        adopted: naming.Adopted | None = None,
    ) -> None:
        """Build the deployment of ``config`` for the image whose PCR0 is ``pcr0``.

        :param vpc: an existing VPC with isolated subnets and the endpoints of
            :mod:`enclave_infra.network`; default: a new one.
        :param adopted: the buckets, role and key an earlier deployment retained, used instead
            of new ones (``enclave deploy`` finds them); with a key, ``pcr0`` must be the PCR0
            it is locked to.
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
        self.adopted = adopted or naming.Adopted()
        self.storage_bucket = self._bucket(
            "Storage", naming.storage_bucket_name(config), self.adopted.storage_bucket
        )
        self.eif_bucket = self._bucket(
            "Eif", naming.eif_bucket_name(config), self.adopted.eif_bucket
        )
        if self.adopted.storage_bucket and self.adopted.eif_bucket:
            # cdk-nag exempts a bucket other buckets' LoggingConfiguration names; the adopted
            # buckets name it only once enclave deploy sets their logging (step 4).
            acknowledge(
                self.logs_bucket,
                "S1",
                "The access-log bucket: its own access is not logged (S3 would log its own log "
                "deliveries forever). It receives the adopted buckets' access logs, whose "
                "logging enclave deploy points here after cdk deploy.",
            )
        self.role: iam.IRole = instance_role(
            self,
            "HostRole",
            parameter_path=naming.parameter_path(config),
            storage=self.storage_bucket,
            storage_prefix=naming.storage_prefix(config),
            eif=self.eif_bucket,
            adopted_arn=self.adopted.role_arn,
        )
        self.key: kms.CfnKey | None = None
        if self.adopted.key_id is None:
            self.key = self._key()
            self.key_id: str = self.key.ref
        else:
            if normalize_pcr0(self.adopted.key_pcr0 or "") != self.pcr0:
                raise ConfigError(
                    f"the adopted key {self.adopted.key_id} is locked to PCR0 "
                    f"{self.adopted.key_pcr0}, not {self.pcr0}"
                )
            self.key_id = self.adopted.key_id
        self.key_parameter = ssm.StringParameter(
            self,
            "KmsKeyIdParameter",
            parameter_name=f"{naming.parameter_path(config)}/{KMS_KEY_PARAMETER}",
            string_value=self.key_id,
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

    def _bucket(self, construct_id: str, name: str | None, adopted: str | None) -> s3.IBucket:
        """A new hardened bucket, or the retained one an earlier deployment left."""
        prefix = f"{construct_id.lower()}/"
        if adopted is not None:
            return adopted_bucket(
                self, construct_id, bucket_name=adopted, logs=self.logs_bucket, logs_prefix=prefix
            )
        return hardened_bucket(
            self,
            construct_id,
            bucket_name=name,
            logs=self.logs_bucket,
            logs_prefix=prefix,
        )

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
