"""TEST-ONLY: where moto 5.2.6 differs from AWS for our stack, corrected in the test's server.

Applied by :mod:`tests.e2e.deploy.moto_launcher` in the moto server's process before it serves;
never imported elsewhere. Each patch names the moto behaviour it corrects and what AWS does.
moto is pinned (tox.ini, ``deploy`` env): a new moto release is checked against this list.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

#: Resource types added to moto's CloudFormation (kept alive here).
_RESOURCE_TYPES: list[type] = []


def apply_all() -> list[str]:
    """Apply every patch; return their names (logged by the launcher)."""
    patches: list[Callable[[], None]] = [
        flow_log_s3_prefix,
        kms_key_policy_from_template,
        change_set_outputs,
        change_sets_per_stack,
        previous_parameter_values,
        retain_except_on_create,
        network_deleted_with_the_stack,
        bucket_policies_in_templates,
        bucket_policy_secure_transport,
        send_command_without_targets,
        stack_deletion_outcome,
        template_url_on_endpoint,
        instance_network_interfaces,
    ]
    for patch in patches:
        patch()
    return [p.__name__ for p in patches]


def flow_log_s3_prefix() -> None:
    """``AWS::EC2::FlowLog`` to S3 with a key prefix (``arn:aws:s3:::bucket/vpc-flow-logs/``).

    moto takes everything after the ARN's fifth colon as the bucket name, so a destination with a
    prefix names a bucket ``bucket/vpc-flow-logs/`` that does not exist and CreateFlowLogs fails
    (``LogDestinationNotFoundException``), failing the stack. AWS delivers to the bucket under the
    prefix. Here moto checks the bucket alone and the flow log keeps the full destination.
    """
    import inspect

    from moto.ec2.models.flow_logs import FlowLogsBackend

    original = FlowLogsBackend.create_flow_logs
    signature = inspect.signature(original)

    def create_flow_logs(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs).arguments
        destination = bound.get("log_destination")
        if bound.get("log_destination_type") != "s3" or not destination:
            return original(self, *args, **kwargs)
        arn_prefix, _, rest = destination.partition(":::")
        bound["log_destination"] = f"{arn_prefix}:::{rest.split('/', 1)[0]}"
        flow_logs, errors = original(**bound)
        for flow_log in flow_logs:
            flow_log.log_destination = destination
        return flow_logs, errors

    FlowLogsBackend.create_flow_logs = create_flow_logs  # type: ignore[method-assign]


def kms_key_policy_from_template() -> None:
    """``AWS::KMS::Key`` whose ``KeyPolicy`` is a JSON object (as CDK writes it).

    moto stores the template's object as the key's policy, so GetKeyPolicy answers an object
    where the API has a string (botocore fails to parse it) and DescribeKey's policy checks
    fail. CloudFormation sends the policy to KMS as JSON text. Here the object is serialized
    before moto creates the key.
    """
    from moto.kms.models import Key

    original = Key.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create_from_cloudformation_json(
        cls: type[Key], resource_name: str, cloudformation_json: Any, *args: Any, **kwargs: Any
    ) -> Key:
        properties = cloudformation_json.get("Properties") or {}
        policy = properties.get("KeyPolicy")
        if isinstance(policy, dict):
            cloudformation_json = {
                **cloudformation_json,
                "Properties": {**properties, "KeyPolicy": json.dumps(policy)},
            }
        return original(cls, resource_name, cloudformation_json, *args, **kwargs)  # type: ignore[no-any-return]

    Key.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)  # type: ignore[method-assign,assignment]


def change_set_outputs() -> None:
    """A stack created or updated through a change set (what ``cdk deploy`` does).

    moto builds a change set's stack with an empty template, and executing the change set
    creates the resources but never rebuilds the stack's outputs, so DescribeStacks shows none
    (``enclave deploy`` reads ``LockedPCR0``, ``KMSKeyParameter``... there). AWS evaluates the
    new template's ``Outputs`` when the change set is executed. Here the stack's output map is
    rebuilt from the executed template.
    """
    from moto.cloudformation.models import ChangeSet

    original = ChangeSet.apply

    def apply(self: ChangeSet) -> None:
        original(self)
        stack = self.stack
        stack.template = self.template
        stack._parse_template()
        stack.output_map = stack._create_output_map()

    ChangeSet.apply = apply  # type: ignore[method-assign]


def template_url_on_endpoint() -> None:
    """A ``TemplateURL`` on a custom S3 endpoint (``http://127.0.0.1:PORT/bucket/key``).

    With ``AWS_ENDPOINT_URL`` set, the cdk CLI publishes the template to the bootstrap bucket
    and hands CloudFormation a path-style URL on that endpoint. moto reads a path-style URL only
    when its host says ``localhost`` or ``s3...amazonaws.com`` and otherwise takes the host's
    first label (``127``) as the bucket: ``The specified bucket does not exist``. CloudFormation
    reads the object the URL names. Here a URL on a numeric host is read path-style too.
    """
    import ipaddress
    from urllib.parse import urlparse

    from moto.cloudformation import models, responses, utils

    original = utils.get_stack_from_s3_url

    def get_stack_from_s3_url(template_url: str, account_id: str, partition: str) -> str:
        parts = urlparse(template_url)
        try:
            ipaddress.ip_address(parts.hostname or "")
        except ValueError:
            return original(template_url, account_id, partition)
        from moto.s3.models import s3_backends

        bucket, key = parts.path.lstrip("/").split("/", 1)
        found = s3_backends[account_id][partition].get_object(bucket, key)
        return found.value.decode("utf-8")  # type: ignore[union-attr]

    utils.get_stack_from_s3_url = get_stack_from_s3_url
    models.get_stack_from_s3_url = get_stack_from_s3_url  # type: ignore[attr-defined]
    responses.get_stack_from_s3_url = get_stack_from_s3_url  # type: ignore[attr-defined]


def instance_network_interfaces() -> None:
    """``AWS::EC2::Instance`` with ``NetworkInterfaces`` (how CDK places a host without a public
    IP) and ``MetadataOptions``.

    moto's template handler passes only ``SubnetId`` and ``SecurityGroups`` on to RunInstances
    and drops ``NetworkInterfaces``, so the host lands in the default VPC with a public IP and
    without the stack's security group; ``enclave deploy`` then reports an endpoint on that
    public IP. It drops ``MetadataOptions`` too (IMDSv2 required, hop limit 1). CloudFormation
    launches the instance with both. Here the primary interface (subnet, security groups, no
    public IP) and the metadata options reach RunInstances.
    """
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import Instance

    original = Instance.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create_from_cloudformation_json(
        cls: type[Instance],
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Instance:
        properties = cloudformation_json.get("Properties") or {}
        interfaces = properties.get("NetworkInterfaces")
        if not interfaces:
            return original(
                cls, resource_name, cloudformation_json, account_id, region_name, **kwargs
            )  # type: ignore[no-any-return]
        backend = ec2_backends[account_id][region_name]
        nics = [
            {
                "DeviceIndex": int(nic.get("DeviceIndex", 0)),
                "SubnetId": nic.get("SubnetId"),
                "AssociatePublicIpAddress": nic.get("AssociatePublicIpAddress", False),
                "Groups": list(nic.get("GroupSet") or []),
                # The interface launched with the instance goes with it (EC2's default).
                "DeleteOnTermination": nic.get("DeleteOnTermination", True),
                **(
                    {"PrivateIpAddress": nic["PrivateIpAddress"]}
                    if "PrivateIpAddress" in nic
                    else {}
                ),
            }
            for nic in interfaces
        ]
        reservation = backend.run_instances(
            image_id=properties["ImageId"],
            user_data=properties.get("UserData"),
            count=1,
            security_group_names=[],
            instance_type=properties.get("InstanceType", "m1.small"),
            is_instance_type_default=not properties.get("InstanceType"),
            key_name=properties.get("KeyName"),
            block_device_mappings=properties.get("BlockDeviceMappings", {}),
            nics=nics,
            metadata_options=properties.get("MetadataOptions") or {},
            monitoring_state="enabled" if properties.get("Monitoring") else "disabled",
        )
        instance = reservation.instances[0]
        for tag in properties.get("Tags", []):
            instance.add_tag(tag["Key"], tag["Value"])
        if properties.get("IamInstanceProfile"):
            backend.associate_iam_instance_profile(
                instance_id=instance.id,
                iam_instance_profile_name=properties["IamInstanceProfile"],
            )
        return instance

    Instance.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)  # type: ignore[method-assign,assignment]


def change_sets_per_stack() -> None:
    """Change sets named per stack, as ``cdk deploy`` names every one ``cdk-deploy-change-set``.

    moto keeps every change set of every stack in one table and finds one by name alone,
    ignoring ``StackName``: the second stack's DescribeChangeSet may answer the bootstrap
    stack's. It keeps executed change sets (CloudFormation deletes a stack's change sets once one
    is executed); DeleteChangeSet of a name it does not hold fails with a Python error (HTTP 500;
    CloudFormation does nothing), and DescribeChangeSet answers ``ValidationError: Stack with id
    <change set name> does not exist`` where CloudFormation answers ``ChangeSetNotFound``, which
    is what the cdk CLI waits for after deleting. Here a name is looked up within the stack,
    those answers are CloudFormation's, and executing a change set removes the stack's others.
    """
    from moto.cloudformation.exceptions import CloudFormationError
    from moto.cloudformation.responses import CloudFormationResponse
    from moto.core.responses import ActionResult, EmptyResult

    class ChangeSetNotFound(CloudFormationError):
        code = "ChangeSetNotFoundException"

    def resolve(response: Any) -> str | None:
        """The change set's id (its ARN) in the stack the request names, or None."""
        name = response._get_param("ChangeSetName")
        stack = response._get_param("StackName")
        change_sets = response.cloudformation_backend.change_sets
        if name in change_sets:
            return str(name)
        found = [
            change_set_id
            for change_set_id, change_set in change_sets.items()
            if change_set.change_set_name == name
            and (not stack or stack in (change_set.stack_name, change_set.stack_id))
        ]
        return found[-1] if found else None

    def missing(response: Any) -> ChangeSetNotFound:
        name = response._get_param("ChangeSetName")
        return ChangeSetNotFound(f"ChangeSet [{name}] does not exist")

    def describe_change_set(self: Any) -> Any:
        change_set_id = resolve(self)
        if change_set_id is None:
            raise missing(self)
        backend = self.cloudformation_backend
        return ActionResult(backend.describe_change_set(change_set_name=change_set_id))

    def delete_change_set(self: Any) -> Any:
        change_set_id = resolve(self)
        if change_set_id is not None:
            self.cloudformation_backend.delete_change_set(change_set_name=change_set_id)
        return EmptyResult()

    def execute_change_set(self: Any) -> Any:
        change_set_id = resolve(self)
        if change_set_id is None:
            raise missing(self)
        backend = self.cloudformation_backend
        stack_id = backend.change_sets[change_set_id].stack_id
        backend.execute_change_set(
            stack_name=self._get_param("StackName"), change_set_name=change_set_id
        )
        for other in [k for k, v in backend.change_sets.items() if v.stack_id == stack_id]:
            del backend.change_sets[other]
        return EmptyResult()

    CloudFormationResponse.describe_change_set = describe_change_set  # type: ignore[method-assign]
    CloudFormationResponse.delete_change_set = delete_change_set  # type: ignore[method-assign]
    CloudFormationResponse.execute_change_set = execute_change_set  # type: ignore[method-assign]


def previous_parameter_values() -> None:
    """An update whose change set keeps parameters with ``UsePreviousValue`` (``cdk deploy``
    sends it for the SSM-typed ``BootstrapVersion`` and AMI parameters).

    moto substitutes the previous *resolved* value (``34``, ``ami-...``) and then resolves it
    again as an SSM parameter name, which does not exist: ExecuteChangeSet fails with a Python
    error (HTTP 500). It also compares the new parameters with the stack's explicit inputs only
    (none, for a stack created on its defaults), so an unchanged update is never "no changes".
    CloudFormation keeps the previous *input* (the SSM parameter's name) and resolves it again,
    and answers ``The submitted information didn't contain changes`` for an identical template
    and identical inputs. Here the previous input (given, else the template's default) is used,
    and inputs are compared with the defaults filled in.
    """
    from moto.cloudformation.models import Stack
    from moto.cloudformation.responses import CloudFormationResponse

    def inputs(stack: Stack, given: dict[str, Any]) -> dict[str, Any]:
        slots = (stack.template_dict or {}).get("Parameters") or {}
        defaults = {k: v.get("Default") for k, v in slots.items() if "Default" in v}
        return {**defaults, **given}

    create_change_set = CloudFormationResponse.create_change_set

    def create_change_set_with_previous_inputs(self: Any) -> Any:
        listed = self._get_param("Parameters", []) or []
        if any(p.get("UsePreviousValue") for p in listed):
            stack = self.cloudformation_backend.get_stack(self._get_param("StackName"))
            previous = inputs(stack, stack.parameters or {})
            self.params["Parameters"] = [
                {"ParameterKey": p["ParameterKey"], "ParameterValue": previous[p["ParameterKey"]]}
                if p.get("UsePreviousValue")
                else p
                for p in listed
            ]
        return create_change_set(self)

    def has_parameters(self: Stack, other_parameters: dict[str, Any]) -> bool:
        return inputs(self, self.parameters or {}) == inputs(self, other_parameters or {})

    CloudFormationResponse.create_change_set = create_change_set_with_previous_inputs  # type: ignore[method-assign]
    Stack.has_parameters = has_parameters  # type: ignore[method-assign]


def retain_except_on_create() -> None:
    """``DeletionPolicy: RetainExceptOnCreate`` (the stack's instance role).

    moto retains only ``Retain`` on stack deletion and deletes the rest, so it deletes the role
    that the retained key's policy names. CloudFormation retains a ``RetainExceptOnCreate``
    resource when the stack is deleted (it deletes it only when the stack's creation rolls
    back). Here it is retained like ``Retain``.
    """
    from moto.cloudformation.parsing import ResourceMap

    original = ResourceMap.delete

    def delete(self: ResourceMap) -> None:
        self._resource_json_map = {
            name: {**spec, "DeletionPolicy": "Retain"}
            if spec.get("DeletionPolicy") == "RetainExceptOnCreate"
            else spec
            for name, spec in self._resource_json_map.items()
        }
        original(self)

    ResourceMap.delete = delete  # type: ignore[method-assign]


def network_deleted_with_the_stack() -> None:
    """Stack deletion of the VPC's endpoints, route tables, their associations and flow logs.

    moto has no deletion for ``AWS::EC2::VPCEndpoint``, ``AWS::EC2::RouteTable``,
    ``AWS::EC2::SubnetRouteTableAssociation`` and ``AWS::EC2::FlowLog``: DeleteStack leaves them,
    then cannot delete the VPC (``DependencyViolation: The vpc ... has dependencies``), and
    ``cdk destroy`` fails. moto also deletes a stack's resources in no particular order, retrying
    what fails. CloudFormation deletes them all, dependents first. Here each gets its deletion;
    a route table an endpoint still routes through refuses until the endpoint is gone (the
    order CloudFormation follows), so moto's retries reach the same end.
    """
    from moto.ec2.exceptions import DependencyViolationError
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.flow_logs import FlowLogs
    from moto.ec2.models.route_tables import RouteTable
    from moto.ec2.models.subnets import SubnetRouteTableAssociation
    from moto.ec2.models.vpcs import VPCEndPoint

    def delete_endpoint(self: VPCEndPoint, account_id: str, region_name: str) -> None:
        ec2_backends[account_id][region_name].delete_vpc_endpoints([self.id])

    def delete_route_table(self: RouteTable, account_id: str, region_name: str) -> None:
        backend = ec2_backends[account_id][region_name]
        for endpoint in backend.vpc_end_points.values():
            if endpoint.state != "deleted" and self.id in (endpoint.route_table_ids or []):
                raise DependencyViolationError(
                    f"The routeTable '{self.id}' has dependencies and cannot be deleted."
                )
        backend.delete_route_table(self.id)

    def delete_association(
        self: SubnetRouteTableAssociation, account_id: str, region_name: str
    ) -> None:
        backend = ec2_backends[account_id][region_name]
        backend.subnet_associations.pop(f"{self.route_table_id}:{self.subnet_id}", None)

    def delete_flow_log(self: FlowLogs, account_id: str, region_name: str) -> None:
        ec2_backends[account_id][region_name].delete_flow_logs([self.id])

    VPCEndPoint.delete = delete_endpoint  # type: ignore[attr-defined]
    RouteTable.delete = delete_route_table  # type: ignore[attr-defined]
    SubnetRouteTableAssociation.delete = delete_association  # type: ignore[attr-defined]
    FlowLogs.delete = delete_flow_log  # type: ignore[attr-defined]


def bucket_policies_in_templates() -> None:
    """``AWS::S3::BucketPolicy`` in a template.

    moto has no such resource type (``No Moto CloudFormation support for
    AWS::S3::BucketPolicy``) and skips it, so the stack's buckets get no policy: the access-log
    bucket never lets the S3 logging service write, and S3 PutBucketLogging naming it as the
    target fails (``InvalidTargetBucketForLogging``), which ``enclave deploy`` does for adopted
    buckets. CloudFormation puts the policy on the bucket and deletes it with the stack. Here it
    does too (what moto enforces of them: :func:`bucket_policy_secure_transport`).
    """
    from moto.cloudformation import parsing
    from moto.core.common_models import CloudFormationModel
    from moto.s3.models import s3_backends
    from moto.utilities.utils import get_partition

    class BucketPolicy(CloudFormationModel):
        def __init__(self, bucket: str) -> None:
            self.bucket = bucket

        @staticmethod
        def cloudformation_name_type() -> str:
            return ""

        @staticmethod
        def cloudformation_type() -> str:
            return "AWS::S3::BucketPolicy"

        @property
        def physical_resource_id(self) -> str:
            return f"{self.bucket}-policy"

        @classmethod
        def create_from_cloudformation_json(  # type: ignore[override]
            cls,
            resource_name: str,
            cloudformation_json: Any,
            account_id: str,
            region_name: str,
            **kwargs: Any,
        ) -> BucketPolicy:
            properties = cloudformation_json["Properties"]
            bucket = properties["Bucket"]
            backend = s3_backends[account_id][get_partition(region_name)]
            backend.put_bucket_policy(bucket, json.dumps(properties["PolicyDocument"]).encode())
            return cls(bucket)

        @classmethod
        def update_from_cloudformation_json(  # type: ignore[override]
            cls,
            original_resource: Any,
            new_resource_name: str,
            cloudformation_json: Any,
            account_id: str,
            region_name: str,
        ) -> BucketPolicy:
            return cls.create_from_cloudformation_json(
                new_resource_name, cloudformation_json, account_id, region_name
            )

        def delete(self, account_id: str, region_name: str) -> None:
            backend = s3_backends[account_id][get_partition(region_name)]
            if self.bucket in backend.buckets:
                backend.delete_bucket_policy(self.bucket)

    # moto finds resource types among CloudFormationModel's subclasses, held weakly: keep it.
    _RESOURCE_TYPES.append(BucketPolicy)
    for cached in (parsing.get_model_list, parsing.get_model_map, parsing.get_name_type_map):
        cached.cache_clear()


def bucket_policy_secure_transport() -> None:
    """A bucket policy denying requests without TLS (every bucket of the stack and of ``cdk
    bootstrap`` has one: ``Deny s3:*`` when ``aws:SecureTransport`` is ``false``).

    moto ignores the ``Bool`` condition operator when it evaluates a bucket policy, so that Deny
    applies to every request and refuses all of them (the cdk CLI's template upload fails with
    ``AccessDenied``). S3 evaluates the condition per request; every client here reaches AWS
    over TLS in real life, and only the test's endpoint is plain HTTP on loopback. Here requests
    count as made over TLS: a statement conditioned on ``aws:SecureTransport`` being ``false``
    does not apply.
    """
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.s3.models import FakeBucket

    def without_tls(statement: dict[str, Any]) -> bool:
        value = (statement.get("Condition") or {}).get("Bool", {}).get("aws:SecureTransport")
        values = value if isinstance(value, list) else [value]
        return value is not None and all(str(v).lower() == "false" for v in values)

    def get_permission(self: FakeBucket, action: str, resource: str) -> Any:
        if self.policy is None:
            return PermissionResult.NEUTRAL
        policy = json.loads(self.policy.decode())
        statements = policy.get("Statement") or []
        if isinstance(statements, dict):
            statements = [statements]
        applying = [s for s in statements if not without_tls(s)]
        if not applying:
            return PermissionResult.NEUTRAL
        evaluated = IAMPolicy(json.dumps({**policy, "Statement": applying}))
        return evaluated.is_action_permitted(action, resource)

    FakeBucket.get_permission = get_permission  # type: ignore[method-assign]


def send_command_without_targets() -> None:
    """SendCommand with ``InstanceIds`` and no ``Targets`` (how deploy, status and destroy send).

    moto adds the instances that match ``Targets`` to the command's instances, and with no
    ``Targets`` every instance of the account matches: a command for the new host also runs on
    the terminated one a destroyed stack left. SSM runs it on the instances named. Here
    ``Targets`` adds instances only when it is given.
    """
    from moto.ssm.models import Command

    original = Command._get_instance_ids_from_targets

    def from_targets(self: Command) -> list[str]:
        return original(self) if self.targets else []

    Command._get_instance_ids_from_targets = from_targets  # type: ignore[method-assign]


def stack_deletion_outcome() -> None:
    """DeleteStack's outcome: a stack whose deletion fails, and the change sets of a deleted one.

    When deleting a resource fails, moto answers DeleteStack itself with the error and drops the
    stack from every list, so nobody sees it again. CloudFormation accepts DeleteStack, then
    leaves the stack ``DELETE_FAILED`` with the reason (what ``cdk destroy`` reports and what
    ``enclave deploy`` names the way out of). moto also keeps a deleted stack's change sets;
    CloudFormation deletes them with it. Here a failed deletion leaves the stack
    ``DELETE_FAILED`` with its reason, and a deleted stack's change sets go.
    """
    from moto.cloudformation.models import CloudFormationBackend

    original = CloudFormationBackend.delete_stack

    def delete_stack(self: CloudFormationBackend, name_or_stack_id: str) -> None:
        stacks = [s for s in self.stacks.values() if name_or_stack_id in (s.name, s.stack_id)]
        try:
            original(self, name_or_stack_id)
        except Exception as exc:  # noqa: BLE001 - CloudFormation reports it on the stack
            for stack in stacks:
                self.stacks[stack.stack_id] = stack
                stack.status = "DELETE_FAILED"
                stack.status_reason = f"The following resource(s) failed to delete: {exc}"
                stack._add_stack_event("DELETE_FAILED", resource_status_reason=str(exc))
            return
        gone = {stack.stack_id for stack in stacks}
        for change_set_id in [k for k, v in self.change_sets.items() if v.stack_id in gone]:
            del self.change_sets[change_set_id]

    CloudFormationBackend.delete_stack = delete_stack  # type: ignore[method-assign]
