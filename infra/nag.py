"""Acknowledging cdk-nag findings in code, next to the resource, with the reason.

cdk-nag 3 reads CDK's own acknowledgments (``Validations.of(scope).acknowledge``) under the id
``<pack>::<rule>[<finding>]``; the reason is recorded in the cloud assembly's metadata, where
the tests check that every acknowledged rule has one.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct

__all__ = ["acknowledge"]

PACK = "AwsSolutions"


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge AwsSolutions ``rule`` (``"EC29"``, ``"IAM5[Resource::*]"``) on ``scope``'s
    subtree, for ``reason``."""
    Validations.of(scope).acknowledge(Acknowledgment(id=f"{PACK}::{PACK}-{rule}", reason=reason))
