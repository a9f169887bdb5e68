"""TEST-ONLY: ``cdk bootstrap`` of the moto account, as a user does once per account and region.

The real command with the pinned CLI (the README's prerequisite): it deploys the ``CDKToolkit``
stack (the assets bucket, the deploy and publishing roles, the
``/cdk-bootstrap/hnb659fds/version`` parameter) into moto, which ``cdk deploy`` then uses.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.e2e.deploy.project import ACCOUNT, REGION

BOOTSTRAP_TIMEOUT_S = 300.0


def bootstrap(env: dict[str, str], work: Path) -> None:
    """Run ``cdk bootstrap aws://ACCOUNT/REGION`` against moto; raise with its output on failure."""
    done = subprocess.run(  # noqa: S603 - argument list
        ["cdk", "bootstrap", f"aws://{ACCOUNT}/{REGION}"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=BOOTSTRAP_TIMEOUT_S,
        check=False,
    )
    (work / "cdk-bootstrap.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise AssertionError(f"cdk bootstrap failed ({done.returncode}):\n{done.stderr[-4000:]}")
