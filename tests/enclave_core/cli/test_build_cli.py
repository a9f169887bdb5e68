"""`enclave build` as a user runs it, with the fake docker and nitro-cli on PATH."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave_core import __version__
from enclave_core.config import Config
from enclave_core.testing import dev_config_document, write_config
from tests.doubles.host_tools import FAKES
from tests.doubles.locked import EPOCH, fake_lock, framework_wheel
from tests.helpers import cli

TAG = f"dev-hello:{__version__}"


@pytest.fixture(autouse=True)
def _locked(app_config: Config) -> None:
    """enclave.lock with its (fake) wheels in the cache: the builds run offline."""
    fake_lock(app_config)


DEV_WARNING = (
    "warning: mode is 'development': an enclave needs mode: production backends (nitro "
    "attestation, aws KMS, ssm secrets, s3 storage)\n"
)


def test_build_prints_numbered_progress_and_the_pcrs(
    capsys: pytest.CaptureFixture[str], app_config: Config, fakes: Path
) -> None:
    code, out, err = cli(capsys, "build", "-c", str(app_config.path))
    assert (code, err) == (0, DEV_WARNING)
    lines = out.splitlines()
    pcrs = json.loads((app_config.base_dir / "artifacts" / "pcr.json").read_text())
    assert [line for line in lines if line.startswith("[")] == [
        "[1/4] writing the build context artifacts/context (enclave.lock)",
        f"[2/4] docker build -t {TAG} -f artifacts/context/Dockerfile --build-arg "
        f"SOURCE_DATE_EPOCH={EPOCH} artifacts/context",
        f"[3/4] nitro-cli build-enclave --docker-uri {TAG} --output-file artifacts/image.eif",
        "[4/4] writing artifacts/pcr.json",
    ]
    # docker's own output, indented under its step
    assert any(line.endswith(f"naming to docker.io/library/{TAG} done") for line in lines)
    assert all(line.startswith(("[", "    ", "PCR", "wrote ")) for line in lines)
    artifacts = app_config.base_dir / "artifacts"
    assert lines[-4:] == [
        f"PCR0: {pcrs['PCR0']}",
        f"PCR1: {pcrs['PCR1']}",
        f"PCR2: {pcrs['PCR2']}",
        f"wrote {artifacts / 'image.eif'} and {artifacts / 'pcr.json'}",
    ]


def test_build_json_is_one_object_on_stdout(
    capsys: pytest.CaptureFixture[str], app_config: Config, fakes: Path
) -> None:
    code, out, err = cli(capsys, "build", "-f", "json", "-c", str(app_config.path))
    assert code == 0
    doc = json.loads(out)
    assert doc["image"] == TAG and doc["eif"] == str(
        app_config.base_dir / "artifacts" / "image.eif"
    )
    assert (
        doc["PCR0"]
        == json.loads((app_config.base_dir / "artifacts" / "pcr.json").read_text())["PCR0"]
    )
    assert "[2/4] docker build" in err  # progress goes to stderr with -f json


def test_without_docker_one_line_says_so(
    capsys: pytest.CaptureFixture[str],
    app_config: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    only = tmp_path / "only-nitro-cli"
    only.mkdir()
    (only / "nitro-cli").symlink_to(FAKES / "nitro-cli")
    monkeypatch.setenv("PATH", str(only))
    code, out, err = cli(capsys, "build", "-c", str(app_config.path))
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == (
        "ERROR: enclave build needs docker: not found on PATH (install Docker and start its daemon)"
    )
    (only / "nitro-cli").unlink()
    (only / "docker").symlink_to(FAKES / "docker")
    monkeypatch.setenv("PATH", str(only))
    code, _, err = cli(capsys, "build", "-c", str(app_config.path))
    assert code == 1
    assert err.splitlines()[-1].startswith(
        "ERROR: enclave build needs nitro-cli: not found on PATH"
    )


def test_a_failed_docker_build_shows_its_last_lines(
    capsys: pytest.CaptureFixture[str],
    app_config: Config,
    fakes: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "ERROR: No matching distribution found")
    code, _, err = cli(capsys, "build", "-c", str(app_config.path))
    assert code == 1
    lines = err.splitlines()
    start = lines.index(
        "ERROR: docker build failed with exit status 1 (is the Docker daemon running?); its "
        "last lines:"
    )
    tail = lines[start + 1 :]
    assert tail[-1].startswith("  ERROR: failed to solve: process ")
    assert any("No matching distribution found" in line for line in tail)
    assert all(line.startswith("  ") for line in tail)


def test_signing_needs_both_files_and_a_wheel_must_be_the_locked_one(
    capsys: pytest.CaptureFixture[str], app_config: Config, fakes: Path, tmp_path: Path
) -> None:
    code, _, err = cli(
        capsys, "build", "--signing-certificate", "cert.pem", "-c", str(app_config.path)
    )
    assert (code, err) == (1, "ERROR: --signing-certificate and --private-key go together\n")
    # The lock pins the framework's wheel by hash: another build of it is refused until relocked.
    wheel = tmp_path / framework_wheel()
    wheel.write_bytes(b"PK a rebuilt wheel")
    code, _, err = cli(capsys, "build", "--wheel", str(wheel), "-c", str(app_config.path))
    assert code == 1
    assert f"ERROR: enclave.lock does not pin {wheel.name} with this content" in err
    assert "run enclave lock, then build" in err
    artifacts = app_config.base_dir / "artifacts"
    assert (artifacts / "wheels" / wheel.name).read_bytes() == b"PK a rebuilt wheel"
    # The locked one itself is accepted, and it is what the image installs.
    locked = app_config.state_dir / "wheels" / framework_wheel()
    wheel.write_bytes(locked.read_bytes())
    code, _, _ = cli(capsys, "build", "--wheel", str(wheel), "-c", str(app_config.path))
    assert code == 0
    image = json.loads((fakes / "docker.json").read_text())["images"][TAG]
    assert f"wheels/{wheel.name}" in image["Files"]


def test_env_references_are_warned_about(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    fakes: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GREETING_VALUE", "hi")
    doc = dev_config_document(app={"env": {"GREETING": {"$env": "GREETING_VALUE"}}})
    config = write_config(tmp_path / "envapp", doc)
    fake_lock(config)
    code, _, err = cli(capsys, "build", "-c", str(config.path))
    assert code == 0
    assert (
        "warning: app.env.GREETING comes from $env GREETING_VALUE, which the enclave does not "
        "have: the runtime will not load enclave.yaml there"
    ) in err.splitlines()
