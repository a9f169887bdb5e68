"""Synthesize the deployment's CloudFormation, offline and in process.

``enclave synth`` and ``enclave deploy`` call :func:`synthesize`; the folder it fills is a
complete cloud assembly, which ``cdk deploy --app DIR`` deploys as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from enclave_infra.app import build_app
from enclave_infra.naming import Adopted

from enclave_core.config import Config

__all__ = ["SynthResult", "synthesize"]


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize` wrote."""

    #: The cloud assembly folder (``cdk deploy --app`` takes it).
    outdir: Path
    #: The CloudFormation stack names, in creation order.
    stack_names: list[str] = field(default_factory=list)
    #: Each stack's template file, by stack name.
    templates: dict[str, Path] = field(default_factory=dict)


def synthesize(
    config: Config, outdir: Path, *, pcr0: str, adopted: Adopted | None = None
) -> SynthResult:
    """Write the cloud assembly of ``config``'s stack, for the image measured ``pcr0``.

    :param outdir: created if needed; files of an earlier synthesis are overwritten.
    :param pcr0: the image's PCR0 (96 hex digits); the KMS key decrypts for it alone.
    :param adopted: the buckets, role and key an earlier deployment retained, used again.
    :raises ConfigError: for an instance type without Nitro Enclaves, an invalid PCR0, or an
        enclave.yaml too large for user data.
    """
    outdir = Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    app, stack = build_app(config, pcr0=pcr0, outdir=outdir, adopted=adopted)
    assembly = app.synth()
    names: list[str] = []
    templates: dict[str, Path] = {}
    for artifact in assembly.stacks:
        names.append(artifact.stack_name)
        templates[artifact.stack_name] = Path(artifact.template_full_path)
    assert stack.stack_name in templates
    return SynthResult(outdir=outdir, stack_names=names, templates=templates)
