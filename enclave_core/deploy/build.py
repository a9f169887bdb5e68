"""``enclave build``: the app as a Docker image, then as an enclave image file (EIF) and its PCRs.

Four steps, each printed as ``[k/4]``: write the build context ``artifacts/context`` from
``enclave.lock`` (:mod:`enclave_core.deploy.lock`, made on the first build; the context is
deterministic, :mod:`enclave_core.deploy.context`), ``docker build``, ``nitro-cli build-enclave``
(signed when given a certificate, which adds PCR8), and ``artifacts/pcr.json``, the values
``enclave synth`` and ``enclave deploy`` lock the key to, with what made them (the context's
digest, the base image, the nitro-cli version). ``--expect`` compares the PCRs with a published
``pcr.json``. The image's contents: docs/architecture.md, "Building and deploying".
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from enclave_core import __version__
from enclave_core.config import Config
from enclave_core.deploy.context import Context, write_context
from enclave_core.deploy.external import Which, display, failure, require_tool, run, stream
from enclave_core.deploy.layout import (
    BASE_IMAGE,
    artifacts_dir,
    build_outputs,
    local_wheels,
    pcr_path,
)
from enclave_core.deploy.lock import (
    LOCK_FILENAME,
    Lock,
    fetch_wheels,
    lock_problems,
    make_lock,
    read_lock,
    sha256_of,
    write_lock,
)
from enclave_core.deploy.registry import resolve_digest
from enclave_core.errors import EnclaveError, ValidationError
from enclave_core.image.files import image_files

DOCKER_TIMEOUT_S = 1800.0
NITRO_CLI_TIMEOUT_S = 1800.0
STEPS = 4
PCR_NAMES = ("PCR0", "PCR1", "PCR2", "PCR8")
#: What pcr.json records of the build besides the PCRs: a rebuild compares them first.
BUILD_RECORD = ("BuildContext", "BaseImage", "NitroCLI")
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
    #: ``sha256:…`` of the build context (:func:`enclave_core.deploy.context.context_digest`).
    context_digest: str = ""


def image_tag(config: Config) -> str:
    """``<prefix>-<name>:<version>``, lower-cased to what Docker accepts as a repository name."""
    prefix = re.sub(r"[^a-z0-9]+", "-", config.prefix.lower()).strip("-")
    return f"{prefix}-{config.name}:{__version__}" if prefix else f"{config.name}:{__version__}"


def app_image_files(config: Config) -> list[tuple[str, Path]]:
    """The app's files that go into the image (``app/`` of the context), sorted.

    The development snapshot leaves out the same paths
    (:func:`~enclave_core.image.outputs.build_outputs`), so what never enters the image never
    changes the development PCR0.
    """
    private = build_outputs(config)
    if config.path is not None:
        private.append(config.path)  # copied on its own, to /app/enclave.yaml
    return image_files(config.app_dir, exclude=config.app.exclude, private=private)


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


def ensure_lock(
    config: Config,
    *,
    progress: Callable[[str], None],
    echo: Callable[[str], None],
    digest_of: Callable[[str], str] = resolve_digest,
) -> Lock:
    """``enclave.lock``, made now when there is none (the first build); refused when stale.

    :raises EnclaveError: the lock does not match requirements.txt, the framework's version or
        the architecture (run ``enclave lock``), or it cannot be made (no network).
    """
    lock = read_lock(config)
    if lock is None:
        progress(f"    no {LOCK_FILENAME}: making it (enclave lock), then commit it with the app")
        lock = make_lock(config, base_digest=digest_of(BASE_IMAGE), echo=echo)
        write_lock(config, lock)
        return lock
    problems = lock_problems(config, lock)
    if problems:
        raise EnclaveError(
            f"{LOCK_FILENAME} does not match what this build would install: "
            + "; ".join(problems)
            + ". Run enclave lock, review the change and commit it"
        )
    return lock


def prepare_context(
    config: Config,
    folder: Path,
    *,
    progress: Callable[[str], None],
    echo: Callable[[str], None],
    digest_of: Callable[[str], str] = resolve_digest,
) -> tuple[Lock, Context]:
    """The lock, its wheels and the normalised context in ``folder``
    (:mod:`enclave_core.deploy.context`)."""
    lock = ensure_lock(config, progress=progress, echo=echo, digest_of=digest_of)
    wheels = fetch_wheels(config, lock, echo=echo)
    context = write_context(config, lock, folder, wheels=wheels, app_files=app_image_files(config))
    return lock, context


def _check_wheel_locked(config: Config, wheel: Path) -> None:
    """An existing lock must pin this very wheel: a rebuilt one needs ``enclave lock``."""
    lock = read_lock(config)
    if lock is None:
        return  # the lock made now takes it (artifacts/wheels/ comes first)
    digest = sha256_of(wheel)
    if not any(w.filename == wheel.name and w.sha256 == digest for w in lock.wheels):
        raise EnclaveError(
            f"{LOCK_FILENAME} does not pin {wheel.name} with this content (SHA-256 "
            f"{digest[:16]}…): it is in {local_wheels(config)} now; run enclave lock, then build"
        )


def compare_pcrs(expected_file: Path, measured: dict[str, str]) -> None:
    """Check the PCRs measured against a published ``pcr.json``.

    :raises EnclaveError: naming each PCR that differs (and what the file records of the build).
    :raises ValidationError: the file cannot be read or has no PCR0.
    """
    try:
        expected = json.loads(expected_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValidationError(f"--expect {expected_file} cannot be read: {exc}") from None
    if not isinstance(expected, dict) or not _HEX96.match(str(expected.get("PCR0", ""))):
        raise ValidationError(f"--expect {expected_file} has no PCR0 of 96 hex digits")
    names = [n for n in PCR_NAMES if n in expected or n in measured]
    differ = [
        f"{name}: built {measured.get(name, 'none')[:16]}…, expected "
        f"{str(expected.get(name, 'none')).lower()[:16]}…"
        for name in names
        if str(expected.get(name, "")).lower() != measured.get(name, "")
    ]
    if differ:
        recorded = ", ".join(f"{key} {expected[key]}" for key in BUILD_RECORD if key in expected)
        raise EnclaveError(
            f"the image does not reproduce {expected_file}: "
            + "; ".join(differ)
            + (f" (it records {recorded})" if recorded else "")
        )


def build(
    config: Config,
    *,
    progress: Callable[[str], None],
    echo: Callable[[str], None],
    signing: Signing | None = None,
    wheel: Path | None = None,
    expect: Path | None = None,
    which: Which = shutil.which,
    digest_of: Callable[[str], str] = resolve_digest,
) -> BuildResult:
    """Build the image and the EIF of ``config``'s app; see the module docstring.

    :param progress: receives the ``[k/4] ...`` lines; ``echo`` receives the tools' output.
    :param expect: a published ``pcr.json`` the build must reproduce.
    :raises EnclaveError: a tool is missing or failed, an input file is missing, the lock is
        stale, or the PCRs differ from ``expect``.
    """
    needed_by = "enclave build"
    docker = require_tool("docker", needed_by=needed_by, hint=DOCKER_HINT, which=which)
    nitro_cli = require_tool("nitro-cli", needed_by=needed_by, hint=NITRO_CLI_HINT, which=which)
    inputs = [signing.certificate, signing.private_key] if signing else []
    for given in [*inputs, *([wheel] if wheel else []), *([expect] if expect else [])]:
        if not given.is_file():
            raise ValidationError(f"enclave build: {given} is not a file")
    if wheel is not None and wheel.suffix != ".whl":
        raise ValidationError(f"enclave build: --wheel {wheel} is not a .whl file")
    base = config.base_dir
    artifacts = artifacts_dir(config)
    folder = artifacts / "context"
    dockerfile = folder / "Dockerfile"
    eif = config.resolve(config.enclave.eif)
    tag = image_tag(config)

    progress(f"[1/{STEPS}] writing the build context {_relative(folder, base)} ({LOCK_FILENAME})")
    if wheel is not None:  # the image and the hosts install this simple-enclave
        local_wheels(config).mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, local_wheels(config) / wheel.name)
        _check_wheel_locked(config, wheel)
    lock, context = prepare_context(
        config, folder, progress=progress, echo=echo, digest_of=digest_of
    )
    echo(f"context {context.digest} ({len(context.files)} files, base {lock.base})")

    argv = [docker, "build", "-t", tag, "-f", str(dockerfile)]
    argv += ["--build-arg", f"SOURCE_DATE_EPOCH={lock.source_date_epoch}"]
    if rewrites_timestamps(docker):  # every file of every layer dated SOURCE_DATE_EPOCH too
        argv += ["--output", "type=docker,rewrite-timestamp=true"]
    argv.append(str(folder))
    shown = [*argv[:5], _relative(dockerfile, base), *argv[6:-1], _relative(folder, base)]
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
    record = {
        "BuildContext": context.digest,
        "BaseImage": lock.base,
        "NitroCLI": _version(nitro_cli),
    }
    write_pcr_file(pcr_file, {**measurements, **record})
    if expect is not None:
        compare_pcrs(expect, measurements)
        progress(f"    PCR0, PCR1 and PCR2 are the ones {expect} publishes")
    return BuildResult(tag, eif, pcr_file, dockerfile, measurements, context.digest)


#: The first BuildKit whose exporters rewrite layer file times to SOURCE_DATE_EPOCH.
REWRITE_TIMESTAMP_SINCE = (0, 13)


def rewrites_timestamps(docker: str) -> bool:
    """Whether ``docker buildx`` (BuildKit) can rewrite layer timestamps (``rewrite-timestamp``,
    buildx 0.13 and later); without it, files that ``pip install`` writes keep the build's time."""
    result = run([docker, "buildx", "version"], timeout_s=60)
    match = re.search(r"\bv(\d+)\.(\d+)", result.stdout) if result.returncode == 0 else None
    return match is not None and (int(match[1]), int(match[2])) >= REWRITE_TIMESTAMP_SINCE


def _version(tool: str) -> str:
    """``nitro-cli --version``'s line (its kernel and init blobs come with it)."""
    result = run([tool, "--version"], timeout_s=60)
    return (
        result.stdout.strip().splitlines()[0]
        if result.returncode == 0 and result.stdout.strip()
        else "unknown"
    )


def build_context_only(
    config: Config,
    folder: Path,
    *,
    progress: Callable[[str], None],
    echo: Callable[[str], None],
    digest_of: Callable[[str], str] = resolve_digest,
) -> Context:
    """``enclave build --context-only DIR``: the lock, the wheels and the context; no Docker."""
    _, context = prepare_context(config, folder, progress=progress, echo=echo, digest_of=digest_of)
    return context
