"""``EnclaveStack``: the CloudFormation stack ``{prefix}Nitro{name}`` built from enclave.yaml.

One :class:`~enclave_infra.construct.EnclaveService` plus the outputs ``enclave deploy``,
``status`` and ``destroy`` read: ``InstanceID`` (or ``AutoScalingGroupName`` and
``LoadBalancerDNS``), ``EC2InstanceRoleARN``, ``KMSKeyID``, ``KMSKeyParameter``,
``StorageBucketName``, ``EifBucketName``, ``LogsBucketName``, ``VpcID``, ``LockedPCR0`` (the
PCR0 a redeploy must synthesize with) and, when it uses what an earlier deployment retained,
``AdoptedResources``. Bound to enclave.yaml's region; synthesis stays offline.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Environment, Stack
from constructs import Construct
from enclave_infra.construct import EnclaveService
from enclave_infra.naming import ADOPTED_OUTPUT, Adopted, stack_name

from enclave_core.config import Config

__all__ = ["EnclaveStack"]


class EnclaveStack(Stack):
    """The deployment stack of one enclave.yaml; ``service`` is its :class:`EnclaveService`."""

    def __init__(
        self,
        scope: Construct,
        *,
        config: Config,
        pcr0: str,
        adopted: Adopted | None = None,
        **kwargs: Any,
    ) -> None:
        """Build ``{prefix}Nitro{name}`` for ``config`` and the image measured ``pcr0``.

        :param adopted: what an earlier deployment retained and this stack uses again.

        :param kwargs: passed to :class:`aws_cdk.Stack` (``synthesizer``, ``tags``...).
        """
        name = stack_name(config)
        super().__init__(
            scope,
            name,
            stack_name=name,
            env=Environment(region=config.region),
            description=f"Simple Enclave {config.name} ({config.prefix}): Nitro Enclaves hosts, "
            "attested KMS key, parameters and buckets",
            **kwargs,
        )
        service = EnclaveService(self, "Enclave", config=config, pcr0=pcr0, adopted=adopted)
        self.service = service
        outputs: dict[str, tuple[str, str]] = {
            "EC2InstanceRoleARN": (service.role.role_arn, "the hosts' (and enclave's) IAM role"),
            "KMSKeyID": (service.key_id, "the KMS key the stack created (or adopted)"),
            "KMSKeyParameter": (
                service.key_parameter.parameter_name,
                "the parameter naming the key in use",
            ),
            "LockedPCR0": (service.pcr0, "the only PCR0 the key lets decrypt"),
            "StorageBucketName": (service.storage_bucket.bucket_name, "encrypted app storage"),
            "EifBucketName": (service.eif_bucket.bucket_name, "image.eif and wheels/ go here"),
            "LogsBucketName": (service.logs_bucket.bucket_name, "access and VPC flow logs"),
            "VpcID": (service.vpc.vpc_id, "the isolated VPC"),
        }
        if service.instance is not None:
            outputs["InstanceID"] = (service.instance.instance_id, "the enclave host")
        if service.group is not None and service.load_balancer is not None:
            outputs["AutoScalingGroupName"] = (
                service.group.auto_scaling_group_name,
                "the enclave hosts' group",
            )
            outputs["LoadBalancerDNS"] = (
                service.load_balancer.load_balancer_dns_name,
                "the internal network load balancer",
            )
        if service.adopted:
            outputs[ADOPTED_OUTPUT] = (
                service.adopted.to_json(),
                "what an earlier deployment retained and this stack uses without owning it",
            )
        for key, (value, description) in outputs.items():
            CfnOutput(self, key, value=value, description=description)
