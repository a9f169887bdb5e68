"""The CDK app: ``cdk synth --app "python -m enclave_infra.app"`` beside enclave.yaml.

Reads enclave.yaml (``ENCLAVE_CONFIG``, default ``./enclave.yaml``) and the image's PCR0
(``ENCLAVE_PCR0``, default ``PCR0`` of ``artifacts/pcr.json`` beside enclave.yaml), and builds
one :class:`~enclave_infra.stack.EnclaveStack`. ``enclave synth`` and ``enclave deploy`` do the
same in process through :func:`enclave_infra.synth.synthesize`, without the cdk CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

from aws_cdk import App, Validations
from enclave_infra.naming import Adopted, read_pcr0
from enclave_infra.stack import EnclaveStack

from enclave_core.config import Config, load_config

__all__ = ["build_app", "main"]


def build_app(
    config: Config,
    *,
    pcr0: str,
    outdir: Path | None = None,
    checks: bool = False,
    adopted: Adopted | None = None,
) -> tuple[App, EnclaveStack]:
    """A CDK app holding the stack of ``config``.

    :param adopted: what an earlier deployment retained (``enclave deploy`` finds it).
    :param outdir: where ``app.synth()`` writes the cloud assembly (default: CDK's).
    :param checks: apply cdk-nag's AwsSolutions pack (synthesis then fails on any violation that
        is not acknowledged in code; needs cdk-nag).
    """
    app = App(outdir=str(outdir) if outdir is not None else None)
    stack = EnclaveStack(app, config=config, pcr0=pcr0, adopted=adopted)
    if checks:
        from cdk_nag import AwsSolutionsChecks

        Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack


def main() -> None:
    """Entry point of ``python -m enclave_infra.app`` (what ``cdk --app`` runs)."""
    config = load_config(os.environ.get("ENCLAVE_CONFIG"))
    pcr0 = os.environ.get("ENCLAVE_PCR0") or read_pcr0(config)
    # The cdk CLI passes the output folder in CDK_OUTDIR, which App() reads by itself.
    app, _ = build_app(config, pcr0=pcr0)
    app.synth()


if __name__ == "__main__":
    main()
