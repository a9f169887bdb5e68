"""`enclave synth`: write the deployment's CloudFormation template(s), offline.

``enclave synth [-c FILE] -o DIR [--pcr0 HEX]`` builds the CDK app of :mod:`enclave_infra`
from enclave.yaml and writes a complete cloud assembly to DIR (``cdk deploy --app DIR`` deploys
it). The KMS key's policy is locked to the image's PCR0: ``--pcr0`` or, by default, ``PCR0`` of
``artifacts/pcr.json`` beside enclave.yaml (written by ``enclave build``); the all-zero PCR0 of
a debug-mode enclave is refused. Needs the ``infra`` extra (aws-cdk-lib); no AWS call and no cdk
CLI are involved.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from enclave_infra.naming import pcr_file, read_pcr0

from enclave_core.cli.common import EnclaveLister
from enclave_core.errors import EnclaveError
from enclave_core.pcrs import normalise_pcr

INFRA_MISSING = "enclave synth needs the infra extra: pip install 'simple-enclave[infra]'"


def _synthesizer() -> Any:
    """:func:`enclave_infra.synth.synthesize`, imported only when needed (aws-cdk-lib is big)."""
    try:
        import aws_cdk  # noqa: F401
        from enclave_infra.synth import synthesize
    except ImportError:
        raise EnclaveError(INFRA_MISSING) from None
    return synthesize


class Synth(EnclaveLister):
    """Write the CloudFormation template(s) of the deployment to a folder (offline).

    Prints one row per stack: its name and template file.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """``-o/--output DIR`` (required) and ``--pcr0 HEX``."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "-o",
            "--output",
            metavar="<dir>",
            required=True,
            help="the folder to write the cloud assembly to (created if needed)",
        )
        parser.add_argument(
            "--pcr0",
            metavar="<hex>",
            help="the image's PCR0 (default: PCR0 of artifacts/pcr.json beside enclave.yaml)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[Any]]:
        """Synthesize and list the stacks written."""
        config = self.load(parsed_args)
        if parsed_args.pcr0 is not None:
            what, value = "--pcr0", parsed_args.pcr0
        else:
            what, value = f"PCR0 of {pcr_file(config)}", read_pcr0(config)
        # a malformed or debug-mode (all-zero) PCR0 fails here, before aws-cdk-lib loads: a key
        # locked to the zeros would open for any image
        pcr0 = normalise_pcr(value, what)
        synthesize = _synthesizer()
        result = synthesize(config, Path(parsed_args.output), pcr0=pcr0)
        rows = [(name, str(result.templates[name])) for name in result.stack_names]
        return ("Stack", "Template"), rows
