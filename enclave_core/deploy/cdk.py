"""The AWS CDK command line, as ``enclave deploy`` and ``enclave destroy`` run it.

The ``cdk`` found on PATH (``npm install -g aws-cdk``), else ``npx --yes aws-cdk@2`` when only
npx is there (it downloads the CLI into npm's cache on first use). Both run against the cloud
assembly ``enclave deploy`` synthesized in-process (``--app <state>/cdk.out``), so the CLI
never runs Python itself. Output is streamed; a failure quotes its last lines, with the
bootstrap command when the account and region were never bootstrapped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from enclave_core.config import Config
from enclave_core.deploy.external import Which, failure, stream
from enclave_core.errors import EnclaveError

NPX_PACKAGE = "aws-cdk@2"
DEPLOY_TIMEOUT_S = 3600.0
DESTROY_TIMEOUT_S = 3600.0


def cdk_command(*, needed_by: str, which: Which = shutil.which) -> list[str]:
    """``[<cdk>]``, or ``[<npx>, "--yes", "aws-cdk@2"]`` when only npx is on PATH.

    :raises EnclaveError: neither is installed; the message says how to install the CLI.
    """
    cdk = which("cdk")
    if cdk:
        return [cdk]
    npx = which("npx")
    if npx:
        return [npx, "--yes", NPX_PACKAGE]
    raise EnclaveError(
        f"{needed_by} needs the AWS CDK CLI: neither cdk nor npx is on PATH "
        "(install Node.js, then npm install -g aws-cdk)"
    )


def deploy_argv(base: list[str], app: Path, outputs_file: Path, stack: str) -> list[str]:
    """``cdk deploy --app <app> --require-approval never --outputs-file <file> <stack>``."""
    return [
        *base,
        "deploy",
        "--app",
        str(app),
        "--require-approval",
        "never",
        "--outputs-file",
        str(outputs_file),
        stack,
    ]


def destroy_argv(base: list[str], app: Path, stack: str) -> list[str]:
    """``cdk destroy --app <app> --force <stack>``."""
    return [*base, "destroy", "--app", str(app), "--force", stack]


def run_cdk(
    argv: list[str],
    config: Config,
    *,
    what: str,
    echo: Callable[[str], None],
    timeout_s: float,
) -> None:
    """Run a cdk command in ``config``'s region, streaming its output to ``echo``.

    :raises EnclaveError: it failed (its last lines attached) or timed out.
    """
    env = {**os.environ, "AWS_REGION": config.region, "AWS_DEFAULT_REGION": config.region}
    result = stream(argv, timeout_s=timeout_s, echo=echo, env=env)
    if result.returncode == 0:
        return
    hint = ""
    if any("bootstrap" in line for line in result.tail):
        hint = f"run `cdk bootstrap aws://{config.account}/{config.region}` once, then again"
    raise failure(what, result, hint=hint)
