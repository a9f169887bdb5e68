"""What the infra tests share: a production enclave.yaml, synthesis with cdk-nag, template walks."""

from __future__ import annotations

import fnmatch
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from enclave_infra.app import build_app
from enclave_infra.naming import Adopted
from enclave_infra.stack import EnclaveStack

from enclave_core.config import Config, load_config

PCR0 = "3f" * 48
ACCOUNT = "123456789012"
REGION = "eu-west-1"
ATTESTATION_KEYS = ("kms:recipientattestation:pcr0", "kms:recipientattestation:imagesha384")
#: Every action that yields plaintext, or a wildcard covering one.
PLAINTEXT_ACTIONS = (
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateDataKeyPair",
    "kms:ReEncryptFrom",
)


def production_document(**overrides: Any) -> dict[str, Any]:
    """A production enclave.yaml: ssm, s3 (bucket and prefix), aws KMS, nitro, nitro-cli."""
    document: dict[str, Any] = {
        "version": 1,
        "name": "hello",
        "prefix": "dev",
        "mode": "production",
        "region": REGION,
        "account": ACCOUNT,
        "instance_type": "m6i.xlarge",
        "secrets": {"backend": "ssm", "static": [{"name": "signing_key", "env_var": "KEY"}]},
        "storage": {"backend": "s3", "options": {"bucket": "hello-data-bucket", "prefix": "hello"}},
        "kms": {"backend": "aws"},
        "attestation": {"backend": "nitro"},
        "launcher": {"backend": "nitro-cli"},
    }
    document.update(overrides)
    return document


def write_production_config(folder: Path, **overrides: Any) -> Config:
    """Write :func:`production_document` as ``folder/enclave.yaml`` and load it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "enclave.yaml"
    path.write_text(yaml.safe_dump(production_document(**overrides), sort_keys=False))
    return load_config(path)


@dataclass
class Synthesized:
    """One stack synthesized with cdk-nag's AwsSolutions pack applied."""

    config: Config
    stack: EnclaveStack
    outdir: Path
    template: dict[str, Any]
    report: dict[str, Any]
    metadata: dict[str, Any]

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        """The resources of one CloudFormation type, by logical id."""
        return {k: r for k, r in self.template["Resources"].items() if r["Type"] == kind}

    def one(self, kind: str) -> tuple[str, dict[str, Any]]:
        """The only resource of ``kind``, as (logical id, resource)."""
        found = self.of_type(kind)
        assert len(found) == 1, (kind, sorted(found))
        return next(iter(found.items()))

    def counts(self) -> Counter[str]:
        """How many resources of each type the template has."""
        return Counter(r["Type"] for r in self.template["Resources"].values())

    def acknowledgments(self) -> dict[str, list[tuple[str, str]]]:
        """cdk-nag rules acknowledged in code: construct path -> [(rule id, reason)]."""
        found: dict[str, list[tuple[str, str]]] = {}
        for path, entries in self.metadata.items():
            for entry in entries:
                if entry.get("type") != "aws:cdk:acknowledged-rules":
                    continue
                for rule, reason in entry["data"].items():
                    pack, _, rule_id = rule.partition("::")
                    assert "AwsSolutions" not in rule_id or pack == "AwsSolutions", rule
                    if pack == "AwsSolutions":
                        found.setdefault(path, []).append((rule_id, reason))
        return found


def synthesize_checked(
    config: Config, outdir: Path, *, adopted: Adopted | None = None, pcr0: str = PCR0
) -> Synthesized:
    """Synthesize ``config``'s stack with AwsSolutions applied (raises on any violation)."""
    app, stack = build_app(config, pcr0=pcr0, outdir=outdir, checks=True, adopted=adopted)
    app.synth()
    name = stack.stack_name
    return Synthesized(
        config=config,
        stack=stack,
        outdir=outdir,
        template=json.loads((outdir / f"{name}.template.json").read_text()),
        report=json.loads((outdir / "validation-report.json").read_text()),
        metadata=json.loads((outdir / f"{name}.metadata.json").read_text()),
    )


def text(value: Any) -> str:
    """A template value as text: ``Fn::Join`` joined, ``Ref`` as ``<Id>``, ``GetAtt`` as
    ``<Id.Attr>``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(text(p) for p in parts)
    if isinstance(value, dict) and "Ref" in value:
        return f"<{value['Ref']}>"
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    return json.dumps(value, sort_keys=True)


def as_list(value: Any) -> list[Any]:
    """A policy element that may be one value or a list, as a list."""
    return value if isinstance(value, list) else [value]


def iam_statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement of every identity policy: role inline policies, AWS::IAM::Policy and
    AWS::IAM::ManagedPolicy documents (resource policies of buckets and the key excluded)."""
    statements: list[dict[str, Any]] = []
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] in ("AWS::IAM::Role", "AWS::IAM::User", "AWS::IAM::Group"):
            for policy in props.get("Policies", []):
                statements += as_list(policy["PolicyDocument"]["Statement"])
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            statements += as_list(props["PolicyDocument"]["Statement"])
    return statements


def allows(statement: dict[str, Any], action: str) -> bool:
    """Whether an Allow statement covers ``action`` (wildcards, NotAction included)."""
    if statement.get("Effect") != "Allow":
        return False
    if "NotAction" in statement:
        return not any(
            fnmatch.fnmatch(action.lower(), a.lower()) for a in as_list(statement["NotAction"])
        )
    return any(fnmatch.fnmatch(action.lower(), a.lower()) for a in as_list(statement["Action"]))


def attestation_conditioned(statement: dict[str, Any]) -> bool:
    """Whether a statement's condition pins ``kms:RecipientAttestation:PCR0``/``ImageSha384``."""
    for operator in ("StringEquals", "StringEqualsIgnoreCase"):
        tests = statement.get("Condition", {}).get(operator, {})
        for key in tests:
            if key.lower() in (
                "kms:recipientattestation:pcr0",
                "kms:recipientattestation:imagesha384",
            ):
                return True
    return False
