"""``enclave build``: the app as a Docker image, then as an enclave image file (EIF) and its PCRs.

Four steps, each printed as ``[k/4]``: write ``artifacts/Dockerfile`` and the context (the files
of :func:`enclave_core.image.files.image_files` and enclave.yaml), ``docker build``, ``nitro-cli
build-enclave`` (signed when given a certificate, which adds PCR8), and ``artifacts/pcr.json``,
the values ``enclave synth`` and ``enclave deploy`` lock the key to. The image's contents:
docs/architecture.md, "Building and deploying".
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from enclave_core import __version__
from enclave_core.config import Config
from enclave_core.deploy.external import Which, display, failure, require_tool, run, stream
from enclave_core.errors import ConfigError, EnclaveError, ValidationError
from enclave_core.image.files import image_files

ARTIFACTS_DIRNAME = "artifacts"
PCR_FILENAME = "pcr.json"
BASE_IMAGE = "python:3.11-slim-bookworm"
IMAGE_ROOT = PurePosixPath("/app")
PACKAGE = "simple-enclave"
DOCKER_TIMEOUT_S = 1800.0
NITRO_CLI_TIMEOUT_S = 1800.0
STEPS = 4
PCR_NAMES = ("PCR0", "PCR1", "PCR2", "PCR8")
_HEX96 = re.compile(r"^[0-9a-fA-F]{96}$")
DOCKER_HINT = "install Docker and start its daemon"
NITRO_CLI_HINT = (
    "install the AWS Nitro Enclaves CLI with its build files: "
    "dnf install aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel"
)


@dataclass(frozen=True)
class Signing:
    """The PEM certificate and private key that sign the EIF (PCR8)."""

    certificate: Path
    private_key: Path


@dataclass
class BuildResult:
    """What ``enclave build`` made."""

    image: str
    eif: Path
    pcr_file: Path
    dockerfile: Path
    measurements: dict[str, str] = field(default_factory=dict)


def artifacts_dir(config: Config) -> Path:
    """``artifacts/`` beside enclave.yaml."""
    return config.base_dir / ARTIFACTS_DIRNAME


def local_wheels(config: Config) -> Path:
    """``artifacts/wheels/``: wheels the hosts' wheelhouse takes before PyPI's (``--wheel`` too)."""
    return artifacts_dir(config) / "wheels"


def pcr_path(config: Config) -> Path:
    """``artifacts/pcr.json`` beside enclave.yaml."""
    return artifacts_dir(config) / PCR_FILENAME


def image_tag(config: Config) -> str:
    """``<prefix>-<name>:<version>``, lower-cased to what Docker accepts as a repository name."""
    prefix = re.sub(r"[^a-z0-9]+", "-", config.prefix.lower()).strip("-")
    return f"{prefix}-{config.name}:{__version__}" if prefix else f"{config.name}:{__version__}"


def app_location(config: Config) -> PurePosixPath:
    """Where the app's files go in the image: ``/app`` plus app.dir relative to enclave.yaml.

    :raises ConfigError: app.dir is outside the folder of enclave.yaml.
    """
    try:
        relative = config.app_dir.resolve().relative_to(config.base_dir.resolve())
    except ValueError:
        raise ConfigError(
            f"app.dir {config.app.dir} is outside {config.base_dir}: enclave build puts the app "
            "at the same place relative to enclave.yaml in the image; move it inside"
        ) from None
    return IMAGE_ROOT.joinpath(*relative.parts)


def dockerfile_text(config: Config, *, wheel: str | None = None, requirements: bool = False) -> str:
    """The Dockerfile for ``config``'s app (see the module docstring)."""
    target = app_location(config)
    command = json.dumps(config.app.command)
    if wheel:
        install = [f"COPY {wheel} /tmp/{wheel}", f"RUN pip install /tmp/{wheel} && rm /tmp/{wheel}"]
    else:
        install = [f'RUN pip install "{PACKAGE}=={__version__}"']
    lines = [
        f"# Written by `enclave build` ({PACKAGE} {__version__}) for app {config.name!r}.",
        "# Regenerated on every build: change enclave.yaml, not this file.",
        "#",
        "# The base image is pinned by tag. For reproducible PCRs pin it by digest too",
        f"# (FROM {BASE_IMAGE}@sha256:<digest>); resolving the digest needs the network",
        f"# (docker buildx imagetools inspect {BASE_IMAGE}), so enclave build leaves it to you.",
        f"FROM {BASE_IMAGE}",
        "",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \\",
        "    PIP_DISABLE_PIP_VERSION_CHECK=1",
        "",
        "# The framework: its runtime is the enclave's entry point.",
        *install,
        "",
        f"WORKDIR {IMAGE_ROOT}",
    ]
    if requirements:
        lines += [
            "# The app's own dependencies, in their own layer.",
            f"COPY app/requirements.txt {target / 'requirements.txt'}",
            f"RUN pip install -r {target / 'requirements.txt'}",
        ]
    lines += [
        "# The app's files (app.dir) and enclave.yaml (mode: production backends).",
        f"COPY app/ {target}/",
        f"COPY enclave.yaml {IMAGE_ROOT / 'enclave.yaml'}",
        "",
        "# The runtime boots (attestation, KMS key, secrets, storage), then runs the app's",
        f"# command from enclave.yaml as its child, in {target}: {command}",
        f'ENTRYPOINT ["enclave", "runtime", "-c", "{IMAGE_ROOT / "enclave.yaml"}"]',
    ]
    return "\n".join(lines) + "\n"


def app_image_files(config: Config) -> list[tuple[str, Path]]:
    """The app's files that go into the image (``app/`` of the context), sorted."""
    top = config.base_dir.resolve()
    private = [config.state_dir, top / ARTIFACTS_DIRNAME, top / "cdk.out"]
    if config.path is not None:
        private.append(config.path)  # copied on its own, to /app/enclave.yaml
    return image_files(config.app_dir, exclude=config.app.exclude, private=private)


def stage_context(config: Config, context: Path, *, wheel: Path | None = None) -> list[str]:
    """Fill ``context`` (emptied first) with ``enclave.yaml``, ``app/`` and the wheel, if any.

    :returns: the app files copied, relative to app.dir, sorted.
    """
    assert config.path is not None, "enclave build needs an enclave.yaml"
    if context.exists():
        shutil.rmtree(context)
    app_out = context / "app"
    app_out.mkdir(parents=True)
    shutil.copy2(config.path, context / "enclave.yaml")
    if wheel is not None:
        shutil.copy2(wheel, context / wheel.name)
    copied: list[str] = []
    for relative, path in app_image_files(config):
        (app_out / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, app_out / relative)
        copied.append(relative)
    return sorted(copied)


def parse_measurements(stdout: str) -> dict[str, str]:
    """PCR0, PCR1, PCR2 (and PCR8 when present) of ``nitro-cli build-enclave``'s JSON, lower-case.

    :raises EnclaveError: no ``Measurements`` object with 96-hex PCR0..2 in the output.
    """
    start = stdout.find("{")
    doc = None
    if start >= 0:
        try:
            doc, _ = json.JSONDecoder().raw_decode(stdout[start:])
        except ValueError:
            doc = None
    measurements = doc.get("Measurements") if isinstance(doc, dict) else None
    if not isinstance(measurements, dict):
        raise EnclaveError("nitro-cli build-enclave printed no Measurements JSON")
    found: dict[str, str] = {}
    for name in PCR_NAMES:
        value = measurements.get(name)
        if value is None and name == "PCR8":
            continue
        if not isinstance(value, str) or not _HEX96.match(value):
            raise EnclaveError(f"nitro-cli build-enclave: Measurements.{name} is not 96 hex digits")
        found[name] = value.lower()
    return found


def write_pcr_file(path: Path, measurements: dict[str, str]) -> None:
    """Write ``pcr.json`` atomically: ``{"PCR0","PCR1","PCR2"[,"PCR8"]}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(measurements, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def build(
    config: Config,
    *,
    progress: Callable[[str], None],
    echo: Callable[[str], None],
    signing: Signing | None = None,
    wheel: Path | None = None,
    which: Which = shutil.which,
) -> BuildResult:
    """Build the image and the EIF of ``config``'s app; see the module docstring.

    :param progress: receives the ``[k/4] ...`` lines; ``echo`` receives the tools' output.
    :raises EnclaveError: a tool is missing or failed, an input file is missing.
    """
    needed_by = "enclave build"
    docker = require_tool("docker", needed_by=needed_by, hint=DOCKER_HINT, which=which)
    nitro_cli = require_tool("nitro-cli", needed_by=needed_by, hint=NITRO_CLI_HINT, which=which)
    inputs = [signing.certificate, signing.private_key] if signing else []
    for given in [*inputs, *([wheel] if wheel else [])]:
        if not given.is_file():
            raise ValidationError(f"enclave build: {given} is not a file")
    if wheel is not None and wheel.suffix != ".whl":
        raise ValidationError(f"enclave build: --wheel {wheel} is not a .whl file")
    base = config.base_dir
    artifacts = artifacts_dir(config)
    dockerfile, context = artifacts / "Dockerfile", artifacts / "context"
    eif = config.resolve(config.enclave.eif)
    tag = image_tag(config)

    progress(f"[1/{STEPS}] writing {_relative(dockerfile, base)} and the build context")
    files = stage_context(config, context, wheel=wheel)
    if wheel is not None:  # the hosts install the same simple-enclave (enclave deploy's wheels)
        local_wheels(config).mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, local_wheels(config) / wheel.name)
    text = dockerfile_text(
        config,
        wheel=wheel.name if wheel else None,
        requirements="requirements.txt" in files,
    )
    dockerfile.write_text(text, encoding="utf-8")

    argv = [docker, "build", "-t", tag, "-f", str(dockerfile), str(context)]
    shown = [*argv[:5], _relative(dockerfile, base), _relative(context, base)]
    progress(f"[2/{STEPS}] {display(shown)}")
    result = stream(argv, timeout_s=DOCKER_TIMEOUT_S, echo=echo)
    if result.returncode != 0:
        raise failure("docker build", result, hint="is the Docker daemon running?")

    eif.parent.mkdir(parents=True, exist_ok=True)
    argv = [nitro_cli, "build-enclave", "--docker-uri", tag, "--output-file", str(eif)]
    if signing is not None:
        argv += ["--signing-certificate", str(signing.certificate)]
        argv += ["--private-key", str(signing.private_key)]
    progress(f"[3/{STEPS}] {display([*argv[:5], _relative(eif, base), *argv[6:]])}")
    result = run(argv, timeout_s=NITRO_CLI_TIMEOUT_S)
    for line in result.tail:
        echo(line)
    if result.returncode != 0:
        raise failure("nitro-cli build-enclave", result)
    measurements = parse_measurements(result.stdout)
    if signing is not None and "PCR8" not in measurements:
        raise EnclaveError("nitro-cli build-enclave signed the EIF but printed no PCR8")

    pcr_file = pcr_path(config)
    progress(f"[4/{STEPS}] writing {_relative(pcr_file, base)}")
    write_pcr_file(pcr_file, measurements)
    return BuildResult(tag, eif, pcr_file, dockerfile, measurements)
