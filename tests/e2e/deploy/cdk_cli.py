"""TEST-ONLY: the real AWS CDK CLI (npm ``aws-cdk``), pinned, installed once per environment.

``npm install --prefix <sys.prefix>/aws-cdk-<version> aws-cdk@<version>``: under the running
virtualenv (the tox env's folder in ``tox -e deploy``), so it is cached with that environment and
a version bump installs afresh beside the old one. Node.js comes from PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

#: The CLI version the test runs (the CLI is versioned apart from aws-cdk-lib; any CLI reads
#: the cloud assemblies of older libraries).
CDK_VERSION = "2.1149.0"
INSTALL_TIMEOUT_S = 600.0


def install(cache: Path | None = None) -> Path:
    """The folder holding the pinned ``cdk`` executable, installing it first if needed.

    :raises RuntimeError: npm is missing or the install failed (its output attached).
    """
    prefix = (cache or Path(sys.prefix)) / f"aws-cdk-{CDK_VERSION}"
    bin_dir = prefix / "node_modules" / ".bin"
    if not (bin_dir / "cdk").is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("the deploy test needs Node.js and npm on PATH for the cdk CLI")
        done = subprocess.run(  # noqa: S603 - argument list
            [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund"]
            + ["--loglevel", "error", f"aws-cdk@{CDK_VERSION}"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0 or not (bin_dir / "cdk").is_file():
            raise RuntimeError(
                f"npm install aws-cdk@{CDK_VERSION} failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
    return bin_dir
