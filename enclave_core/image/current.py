"""Which image the enclave runs, and what a new image measures (its PCR0).

Production runs the EIF at ``enclave.eif``; development runs the snapshot that
``state_dir/image.json`` names, which :func:`apply_image_override` makes ``app.dir`` right after
the config is loaded. :func:`measure_new_image` gives a new image's PCR0: the attestation
backend's measurement of a folder, or ``nitro-cli describe-eif``, or the ``--pcr0`` given
(docs/architecture.md, "Images").
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from loguru import logger

from enclave_core.config import Config
from enclave_core.errors import ConfigError, EnclaveError, ValidationError
from enclave_core.pcrs import is_all_zero, normalise_pcr
from enclave_core.plugin.manager import PluginManager

IMAGE_FILE = "image.json"
PCR0_RE = re.compile(r"^[0-9a-fA-F]{96}$")
NITRO_CLI = "nitro-cli"
DESCRIBE_TIMEOUT_S = 120.0


def image_path(config: Config) -> Path:
    """Where the development image override lives (``state_dir/image.json``)."""
    return config.state_dir / IMAGE_FILE


def read_image_override(config: Config) -> dict[str, str] | None:
    """Return the override ``{"app_dir", "pcr0"}``, or None when there is none.

    :raises ConfigError: the file exists but is not a valid override.
    """
    path = image_path(config)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"image override {path} cannot be read: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("app_dir"), str)
        or not Path(doc["app_dir"]).is_absolute()
        or not isinstance(doc.get("pcr0"), str)
    ):
        raise ConfigError(
            f"image override {path} is not {{'app_dir': <absolute path>, 'pcr0': <hex>}}"
        )
    record = {"app_dir": doc["app_dir"], "pcr0": doc["pcr0"]}
    for optional in ("digest", "source"):
        if isinstance(doc.get(optional), str):
            record[optional] = doc[optional]
    return record


def apply_image_override(config: Config) -> Config:
    """Return ``config`` with ``app.dir`` replaced by the migrated image's folder (development).

    Production configs, and configs without an override, come back unchanged.
    """
    if config.mode != "development":
        return config
    override = read_image_override(config)
    if override is None:
        return config
    return dataclasses.replace(config, app=dataclasses.replace(config.app, dir=override["app_dir"]))


def write_image_override(
    config: Config,
    app_dir: str | Path,
    pcr0: str,
    *,
    digest: str | None = None,
    source: str | Path | None = None,
) -> Path:
    """Record that the development image is now ``app_dir`` (measured as ``pcr0``; when it is a
    snapshot, its files' digest ``digest`` and the folder ``source`` it was taken of).

    Written atomically (temporary file, then rename) so a reader never sees half of it.
    """
    if not PCR0_RE.match(pcr0):
        raise ValidationError(f"image override: PCR0 must be 96 hex characters, not {pcr0!r}")
    path = image_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"app_dir": str(Path(app_dir).resolve()), "pcr0": pcr0.lower()}
    if digest is not None:
        doc["digest"] = digest
    if source is not None:
        doc["source"] = str(Path(source).resolve())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".image-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(doc, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.bind(app_dir=doc["app_dir"], pcr0=doc["pcr0"]).info("development image override written")
    return path


def measure_new_image(
    config: Config,
    *,
    app_dir: str | Path | None = None,
    eif: str | Path | None = None,
    pcr0: str | None = None,
    plugins: PluginManager | None = None,
) -> str:
    """Return the PCR0 (lower-case hex) the new image will have.

    :param app_dir: development: the new app folder, measured by the configured attestation
        backend exactly as the runtime's will measure it.
    :param eif: production: the new EIF, measured with ``nitro-cli describe-eif``.
    :param pcr0: the PCR0 the caller expects; a different measurement is refused. In production
        without nitro-cli on this host it is taken as given.
    :raises ValidationError: a bad argument, ``pcr0`` differs from the measurement, or either is
        the all-zero PCR0 of a debug-mode enclave.
    """
    if (app_dir is None) == (eif is None):
        raise ValidationError("name the new image with exactly one of app_dir and eif")
    expected = None if pcr0 is None else normalise_pcr(pcr0, "the target PCR0")
    if app_dir is not None:
        if config.mode != "development":
            raise ValidationError("--app-dir is for development; in production pass --eif NEW.eif")
        measured = _measure_app_dir(config, Path(app_dir), plugins)
        source = f"app folder {app_dir}"
    else:
        assert eif is not None
        if config.mode != "production":
            raise ValidationError(
                "--eif needs mode: production; in development pass --app-dir DIR (the new files)"
            )
        if not Path(eif).is_file():
            raise ValidationError(f"new image {eif} is not a file")
        found = _describe_eif(Path(eif), have_pcr0=expected is not None)
        if found is None:
            assert expected is not None
            return expected
        measured, source = found, f"EIF {eif}"
    if is_all_zero(measured):  # a debug-mode measurement: a key locked to it opens for anything
        normalise_pcr(measured, f"the measured PCR0 of {source}")  # raises, naming the source
    if expected is not None and expected != measured:
        raise ValidationError(
            f"the target PCR0 {expected[:16]}… given with --pcr0 differs from the new image's "
            f"measurement {measured[:16]}… ({source})"
        )
    return measured


def _measure_app_dir(config: Config, app_dir: Path, plugins: PluginManager | None) -> str:
    # Imported here: the backends module pulls in the plugin manager.
    from enclave_core.plugin.backends import backend_context, load_options, plugins_for

    folder = app_dir.resolve()
    if not folder.is_dir():
        raise ValidationError(f"new app folder {folder} is not a directory")
    plugins = plugins or plugins_for(config)
    cls, options = load_options(config, plugins, "attestation")
    context = dataclasses.replace(backend_context(config), app_dir=folder)
    try:
        nsm: Any = cls.from_options(options, context)
        return str(nsm.describe_pcr(0).data.hex())
    except EnclaveError as exc:
        raise ValidationError(f"cannot measure the new app folder {folder}: {exc}") from None


def _describe_eif(eif: Path, *, have_pcr0: bool) -> str | None:
    """``nitro-cli describe-eif``'s PCR0; None when nitro-cli is absent and a PCR0 was given."""
    binary = shutil.which(NITRO_CLI)
    if binary is None:
        if have_pcr0:
            logger.bind(eif=str(eif)).warning(
                "nitro-cli not found: the PCR0 given is used without checking it against the EIF"
            )
            return None
        raise ValidationError(
            f"cannot measure {eif}: {NITRO_CLI} is not installed here; pass --pcr0 HEX "
            "(from `nitro-cli build-enclave` or `nitro-cli describe-eif`)"
        )
    try:
        done = subprocess.run(  # noqa: S603 - argument list, no shell
            [binary, "describe-eif", "--eif-path", str(eif)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=DESCRIBE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnclaveError(f"nitro-cli describe-eif {eif} failed: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnclaveError(f"nitro-cli describe-eif {eif} failed ({done.returncode}): {last}")
    return parse_describe_eif(done.stdout, eif)


def parse_describe_eif(stdout: str, eif: Path | str = "the EIF") -> str:
    """``Measurements.PCR0`` (lower-case hex) of ``nitro-cli describe-eif`` JSON output."""
    try:
        doc = json.loads(stdout)
    except ValueError:
        doc = None
    measurements = doc.get("Measurements") if isinstance(doc, dict) else None
    value = measurements.get("PCR0") if isinstance(measurements, dict) else None
    if not isinstance(value, str) or not PCR0_RE.match(value):
        raise EnclaveError(
            f"nitro-cli describe-eif {eif}: no 96-hex Measurements.PCR0 in its output"
        )
    return value.lower()
