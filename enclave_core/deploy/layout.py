"""Where ``enclave build`` and ``enclave deploy`` keep their files, and what the image is built on.

``artifacts/`` beside enclave.yaml holds what a build makes (the EIF, ``pcr.json``, the Dockerfile
and its context) and the wheels of an unreleased simple-enclave (``artifacts/wheels/``).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from enclave_core.config import Config
from enclave_core.image.outputs import (  # noqa: F401 - re-exported for deploy/
    ARTIFACTS_DIRNAME,
    LOCK_FILENAME,
    build_outputs,
)

PCR_FILENAME = "pcr.json"
#: The image every enclave is built on; ``enclave.lock`` pins its digest.
BASE_IMAGE = "python:3.11-slim-bookworm"
IMAGE_ROOT = PurePosixPath("/app")
PACKAGE = "simple-enclave"


def artifacts_dir(config: Config) -> Path:
    """``artifacts/`` beside enclave.yaml."""
    return config.base_dir / ARTIFACTS_DIRNAME


def local_wheels(config: Config) -> Path:
    """``artifacts/wheels/``: wheels the hosts' wheelhouse takes before PyPI's (``--wheel`` too)."""
    return artifacts_dir(config) / "wheels"


def pcr_path(config: Config) -> Path:
    """``artifacts/pcr.json`` beside enclave.yaml."""
    return artifacts_dir(config) / PCR_FILENAME
