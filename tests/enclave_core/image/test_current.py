"""The development image override and the measurement of a new image (its PCR0)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from enclave_plugins.simulated_attestation import measure_app_dir

from enclave_core.config import Config
from enclave_core.errors import ConfigError, EnclaveError, ValidationError
from enclave_core.image.current import (
    apply_image_override,
    image_path,
    measure_new_image,
    parse_describe_eif,
    read_image_override,
    write_image_override,
)

PCR0 = "ab" * 48


@pytest.fixture
def new_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "app-v2"
    folder.mkdir()
    (folder / "app.py").write_text("print('v2')\n")
    return folder


def production(config: Config) -> Config:
    return dataclasses.replace(config, mode="production")


# ------------------------------------------------------------------ the override


def test_without_an_override_the_config_is_unchanged(app_config: Config) -> None:
    assert apply_image_override(app_config) is app_config
    assert read_image_override(app_config) is None


def test_an_override_points_the_app_folder_at_the_new_image(
    app_config: Config, new_dir: Path
) -> None:
    path = write_image_override(app_config, new_dir, PCR0.upper())
    assert path == app_config.state_dir / "image.json"
    assert json.loads(path.read_text()) == {"app_dir": str(new_dir), "pcr0": PCR0}
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".image-")] == []
    moved = apply_image_override(app_config)
    assert moved.app_dir == new_dir and moved.app.command == app_config.app.command
    assert app_config.app_dir == app_config.base_dir  # the loaded config itself is not changed
    # Production runs the EIF at enclave.eif: the override is for development only.
    assert apply_image_override(production(app_config)).app_dir == app_config.app_dir


def test_a_relative_override_path_is_stored_absolute(
    app_config: Config, new_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(new_dir.parent)
    write_image_override(app_config, new_dir.name, PCR0)
    assert read_image_override(app_config) == {"app_dir": str(new_dir), "pcr0": PCR0}


@pytest.mark.parametrize(
    "text", ["not json", "[]", '{"app_dir": "relative", "pcr0": "x"}', '{"app_dir": "/x"}']
)
def test_a_broken_override_is_a_config_error(app_config: Config, text: str) -> None:
    image_path(app_config).parent.mkdir(parents=True, exist_ok=True)
    image_path(app_config).write_text(text)
    with pytest.raises(ConfigError, match="image override .* is not"):
        apply_image_override(app_config)


def test_an_override_needs_a_pcr0(app_config: Config, new_dir: Path) -> None:
    with pytest.raises(ValidationError, match="96 hex characters"):
        write_image_override(app_config, new_dir, "abc")
    assert read_image_override(app_config) is None


# ------------------------------------------------------------------ development measurement


def test_a_new_app_folder_is_measured_as_the_simulated_nsm_measures_it(
    app_config: Config, new_dir: Path
) -> None:
    measured = measure_new_image(app_config, app_dir=new_dir)
    assert measured == measure_app_dir(new_dir, (app_config.state_dir,)).hex()
    assert measured != measure_app_dir(app_config.app_dir, (app_config.state_dir,)).hex()
    assert measure_new_image(app_config, app_dir=new_dir, pcr0=measured.upper()) == measured
    (new_dir / "app.py").write_text("print('v3')\n")
    assert measure_new_image(app_config, app_dir=new_dir) != measured


def test_a_pcr0_other_than_the_measurement_is_refused(app_config: Config, new_dir: Path) -> None:
    measured = measure_new_image(app_config, app_dir=new_dir)
    with pytest.raises(ValidationError) as caught:
        measure_new_image(app_config, app_dir=new_dir, pcr0=PCR0)
    assert str(caught.value) == (
        f"the target PCR0 {PCR0[:16]}… given with --pcr0 differs from the new image's "
        f"measurement {measured[:16]}… (app folder {new_dir})"
    )


@pytest.mark.parametrize("pcr0", ["00" * 48, "0x" + "00" * 48])
def test_the_debug_mode_pcr0_is_refused_as_a_target(
    app_config: Config, new_dir: Path, pcr0: str
) -> None:
    with pytest.raises(ValidationError, match="is all zero: that is what every debug-mode"):
        measure_new_image(app_config, app_dir=new_dir, pcr0=pcr0)


def test_a_new_image_measured_all_zero_is_refused(
    tmp_path: Path, make_config: Callable[..., Config], new_dir: Path
) -> None:
    # An attestation backend that reports the debug-mode PCR0 for the new image.
    zero = {"backend": "simulated", "options": {"pcr0": "00" * 48}}
    config = make_config(tmp_path / "zero", attestation=zero)
    with pytest.raises(ValidationError) as caught:
        measure_new_image(config, app_dir=new_dir)
    assert str(caught.value).startswith(f"the measured PCR0 of app folder {new_dir} is all zero")


def test_bad_measurement_requests_are_refused(app_config: Config, new_dir: Path) -> None:
    for kwargs, message in [
        ({}, "exactly one of app_dir and eif"),
        ({"app_dir": new_dir, "eif": new_dir / "x.eif"}, "exactly one"),
        ({"app_dir": new_dir, "pcr0": "12"}, "96 hex"),
        ({"app_dir": new_dir / "missing"}, "is not a directory"),
        ({"eif": new_dir / "app.py"}, "--eif needs mode: production"),
    ]:
        with pytest.raises(ValidationError, match=message):
            measure_new_image(app_config, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="--app-dir is for development"):
        measure_new_image(production(app_config), app_dir=new_dir)


# ------------------------------------------------------------------ production: nitro-cli


def fake_nitro_cli(folder: Path, stdout: str, code: int = 0, stderr: str = "") -> Path:
    """An executable `nitro-cli` that prints canned output and records its arguments."""
    folder.mkdir(exist_ok=True)
    script = folder / "nitro-cli"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{folder}/args"\n'
        f"cat <<'OUT'\n{stdout}\nOUT\n"
        f"echo '{stderr}' >&2\n"
        f"exit {code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


def describe_eif(pcr0: str) -> str:
    return json.dumps(
        {"EifVersion": 4, "Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": pcr0}}
    )


def test_an_eif_is_measured_with_nitro_cli_describe_eif(
    app_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eif = tmp_path / "new.eif"
    eif.write_bytes(b"eif")
    bin_dir = fake_nitro_cli(tmp_path / "bin", describe_eif(PCR0.upper()))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert measure_new_image(production(app_config), eif=eif) == PCR0
    assert (bin_dir / "args").read_text().split() == ["describe-eif", "--eif-path", str(eif)]
    with pytest.raises(ValidationError, match=f"differs .* \\(EIF {eif}\\)"):
        measure_new_image(production(app_config), eif=eif, pcr0="cd" * 48)
    fake_nitro_cli(bin_dir, "", code=3, stderr="E19 file not found")
    with pytest.raises(EnclaveError, match="describe-eif .* failed \\(3\\): E19 file not found"):
        measure_new_image(production(app_config), eif=eif)


def test_without_nitro_cli_the_given_pcr0_is_used(
    app_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eif = tmp_path / "new.eif"
    eif.write_bytes(b"eif")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert measure_new_image(production(app_config), eif=eif, pcr0=PCR0.upper()) == PCR0
    with pytest.raises(ValidationError, match="nitro-cli is not installed here; pass --pcr0"):
        measure_new_image(production(app_config), eif=eif)
    with pytest.raises(ValidationError, match="is not a file"):
        measure_new_image(production(app_config), eif=tmp_path / "missing.eif", pcr0=PCR0)


def test_an_eif_measured_all_zero_is_refused(
    app_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = fake_nitro_cli(tmp_path / "bin", describe_eif("00" * 48))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    eif = tmp_path / "new.eif"
    eif.write_bytes(b"EIF")
    with pytest.raises(ValidationError, match=f"the measured PCR0 of EIF {eif} is all zero"):
        measure_new_image(production(app_config), eif=eif)


@pytest.mark.parametrize("stdout", ["", "{}", '{"Measurements": {"PCR0": "12"}}', "[1]"])
def test_describe_eif_output_without_a_pcr0_is_an_error(stdout: str) -> None:
    with pytest.raises(EnclaveError, match="no 96-hex Measurements.PCR0"):
        parse_describe_eif(stdout, "new.eif")
    assert parse_describe_eif(describe_eif(PCR0), "new.eif") == PCR0
