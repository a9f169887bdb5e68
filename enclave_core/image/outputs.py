"""What a build writes beside the app and never puts in an image.

The development snapshot and ``enclave build``'s context leave out the same paths (:func:`
build_outputs`), so a file that does not enter the production image does not change the
development PCR0 either.
"""

from __future__ import annotations

from pathlib import Path

from enclave_core.config import Config

#: ``artifacts/`` beside enclave.yaml: the EIF, ``pcr.json``, the build context, local wheels.
ARTIFACTS_DIRNAME = "artifacts"
#: Where ``enclave synth -o`` writes in the docs' examples.
CDK_OUT_DIRNAME = "cdk.out"
#: Beside enclave.yaml: what the image installs, pinned (``enclave lock``).
LOCK_FILENAME = "enclave.lock"


def build_outputs(config: Config) -> list[Path]:
    """The state directory, ``artifacts/``, ``cdk.out/`` and ``enclave.lock``."""
    top = config.base_dir.resolve()
    return [config.state_dir, top / ARTIFACTS_DIRNAME, top / CDK_OUT_DIRNAME, top / LOCK_FILENAME]
