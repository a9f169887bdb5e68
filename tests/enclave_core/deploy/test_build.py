"""`enclave build` against the fake docker and nitro-cli (tests/doubles/tools), which check
arguments."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from enclave_core import __version__
from enclave_core.config import Config
from enclave_core.deploy.build import (
    Signing,
    build,
    image_tag,
    parse_measurements,
)
from enclave_core.deploy.context import app_location, dockerfile_text
from enclave_core.deploy.external import ToolFailed
from enclave_core.errors import ConfigError, EnclaveError
from enclave_core.testing import dev_config_document, write_config
from tests.doubles.host_tools import NITRO_CLI
from tests.doubles.locked import BASE_DIGEST, EPOCH, fake_lock, framework_wheel

HEX = {f"PCR{i}": f"{i}" * 96 for i in (0, 1, 2, 8)}
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def app(tmp_path: Path) -> Config:
    """An app folder: enclave.yaml, app.py, a package, state and caches that must stay out."""
    folder = tmp_path / "app"
    config = write_config(folder, dev_config_document(app={"command": ["python3", "app.py"]}))
    (folder / "app.py").write_text("print('hello')\n")
    (folder / "lib").mkdir()
    (folder / "lib" / "util.py").write_text("X = 1\n")
    (folder / "lib" / "__pycache__").mkdir()
    (folder / "lib" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0")
    (folder / ".enclave").mkdir()
    (folder / ".enclave" / "secrets.json").write_text('{"never": "in an image"}')
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "artifacts").mkdir()
    (folder / "artifacts" / "old.eif").write_bytes(b"old")
    fake_lock(config)
    return config


def calls(state: Path, tool: str) -> list[list[str]]:
    path = state / f"{tool}.json"
    return list(json.loads(path.read_text())["calls"]) if path.exists() else []


def run_build(config: Config, **kwargs: Any) -> tuple[Any, list[str]]:
    lines: list[str] = []
    result = build(config, progress=lines.append, echo=lambda s: lines.append(f"  {s}"), **kwargs)
    return result, lines


def test_build_runs_docker_then_nitro_cli_and_writes_pcr_json(app: Config, fakes: Path) -> None:
    result, lines = run_build(app)
    folder = app.base_dir
    tag = f"dev-hello:{__version__}"
    context = folder / "artifacts" / "context"
    assert calls(fakes, "docker") == [
        ["buildx", "version"],  # no buildx here: no layer timestamps to rewrite
        [
            "build",
            "-t",
            tag,
            "-f",
            str(context / "Dockerfile"),
            "--build-arg",
            f"SOURCE_DATE_EPOCH={EPOCH}",
            str(context),
        ],
    ]
    eif = folder / "artifacts" / "image.eif"
    assert calls(fakes, "nitro-cli") == [
        ["build-enclave", "--docker-uri", tag, "--output-file", str(eif)],
    ]
    assert [line for line in lines if line.startswith("[")] == [
        "[1/4] writing the build context artifacts/context (enclave.lock)",
        f"[2/4] docker build -t {tag} -f artifacts/context/Dockerfile --build-arg "
        f"SOURCE_DATE_EPOCH={EPOCH} artifacts/context",
        f"[3/4] nitro-cli build-enclave --docker-uri {tag} --output-file artifacts/image.eif",
        "[4/4] writing artifacts/pcr.json",
    ]
    assert (
        f"  context {result.context_digest} (8 files, base python:3.11-slim-bookworm@{BASE_DIGEST})"
        in lines
    )
    assert "  Enclave Image successfully created." in lines  # nitro-cli's own progress
    # pcr.json holds what nitro-cli measured, and describe-eif reads the same from the EIF; and
    # what made it: the context's digest, the base image by digest, the nitro-cli version.
    pcrs = json.loads((folder / "artifacts" / "pcr.json").read_text())
    assert {k: v for k, v in pcrs.items() if k.startswith("PCR")} == result.measurements
    assert sorted(result.measurements) == ["PCR0", "PCR1", "PCR2"]
    assert pcrs["BuildContext"] == result.context_digest
    assert pcrs["BaseImage"] == f"python:3.11-slim-bookworm@{BASE_DIGEST}"
    assert pcrs["NitroCLI"].startswith("Nitro CLI")
    described = subprocess.run(
        [str(NITRO_CLI), "describe-eif", "--eif-path", str(eif)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert json.loads(described.stdout)["Measurements"]["PCR0"] == pcrs["PCR0"]
    # The image held the locked wheels, the app and enclave.yaml, never the state, artifacts,
    # VCS or caches.
    image = json.loads((fakes / "docker.json").read_text())["images"][tag]
    assert image["Files"] == [
        "Dockerfile",
        "app/app.py",
        "app/lib/util.py",
        "enclave.lock",
        "enclave.yaml",
        "requirements.lock.txt",
        "wheels/httptools-0.6.4-cp311-cp311-manylinux_2_5_x86_64.manylinux1_x86_64.whl",
        f"wheels/{framework_wheel()}",
    ]


def test_a_changed_app_gives_a_new_pcr0(app: Config, fakes: Path) -> None:
    first, _ = run_build(app)
    (app.base_dir / "app.py").write_text("print('hello, changed')\n")
    second, _ = run_build(app)
    assert first.measurements["PCR0"] != second.measurements["PCR0"]


def test_a_signed_build_passes_the_pair_and_records_pcr8(
    app: Config, fakes: Path, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text(CERT)
    key.write_text("-----BEGIN EC PRIVATE KEY-----\n...\n")
    result, _ = run_build(app, signing=Signing(cert, key))
    assert calls(fakes, "nitro-cli")[0][-4:] == [
        "--signing-certificate",
        str(cert),
        "--private-key",
        str(key),
    ]
    pcrs = json.loads((app.base_dir / "artifacts" / "pcr.json").read_text())
    assert sorted(k for k in pcrs if k.startswith("PCR")) == ["PCR0", "PCR1", "PCR2", "PCR8"]
    assert sorted(result.measurements) == ["PCR0", "PCR1", "PCR2", "PCR8"]


def test_a_failing_docker_build_ends_with_its_last_lines(
    app: Config, fakes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "FAKE_DOCKER_FAIL",
        "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.",
    )
    with pytest.raises(ToolFailed) as caught:
        run_build(app)
    assert str(caught.value) == (
        "docker build failed with exit status 1 (is the Docker daemon running?); its last lines:"
    )
    assert caught.value.details[-1].startswith(
        'ERROR: failed to solve: process "/bin/sh -c pip install --no-index --require-hashes '
        "--no-compile --find-links /tmp/enclave-wheels"
    )
    assert any("DO NOT MATCH THE HASHES" in line for line in caught.value.details)
    assert calls(fakes, "nitro-cli") == []


def test_missing_tools_are_named_before_anything_runs(app: Config, fakes: Path) -> None:
    only = {"nitro-cli": "/usr/bin/nitro-cli"}
    with pytest.raises(EnclaveError) as caught:
        run_build(app, which=only.get)
    assert str(caught.value) == (
        "enclave build needs docker: not found on PATH (install Docker and start its daemon)"
    )
    with pytest.raises(EnclaveError) as caught:
        run_build(app, which={"docker": "/usr/bin/docker"}.get)
    assert str(caught.value).startswith("enclave build needs nitro-cli: not found on PATH (")
    assert not (app.base_dir / "artifacts" / "context").exists()


def test_the_dockerfile_installs_only_the_lock_and_runs_the_runtime(app: Config) -> None:
    lock = fake_lock(app)
    text = dockerfile_text(app, lock)
    lines = text.splitlines()
    assert f"FROM python:3.11-slim-bookworm@{BASE_DIGEST}" in lines
    assert f"ARG SOURCE_DATE_EPOCH={EPOCH}" in lines
    assert "COPY --chown=0:0 requirements.lock.txt wheels/ /tmp/enclave-wheels/" in lines
    (install,) = [line for line in text.replace("\\\n", " ").splitlines() if "pip" in line]
    assert install.split() == [
        "RUN", "pip", "install", "--no-index", "--require-hashes", "--no-compile",
        "--find-links", "/tmp/enclave-wheels", "-r", "/tmp/enclave-wheels/requirements.lock.txt",
        "&&", "rm", "-rf", "/tmp/enclave-wheels",
    ]  # fmt: skip
    assert "COPY --chown=0:0 app/ /app/" in lines
    assert "COPY --chown=0:0 enclave.yaml /app/enclave.yaml" in lines
    assert lines[-1] == 'ENTRYPOINT ["enclave", "runtime", "-c", "/app/enclave.yaml"]'
    assert '["python3", "app.py"]' in text  # the app's command, run by the runtime
    pinned = {wheel.name: wheel.sha256 for wheel in lock.wheels}
    assert lock.requirements_text().splitlines() == [
        f"httptools==0.6.4 --hash=sha256:{pinned['httptools']}",
        f"simple-enclave=={__version__} --hash=sha256:{pinned['simple-enclave']}",
    ]


def test_an_app_in_a_subfolder_lands_at_the_same_place_under_app(tmp_path: Path) -> None:
    config = write_config(tmp_path / "svc", dev_config_document(app={"dir": "src"}))
    (tmp_path / "svc" / "src").mkdir()
    (tmp_path / "svc" / "src" / "main.py").write_text("")
    assert str(app_location(config)) == "/app/src"
    assert "COPY --chown=0:0 app/ /app/src/" in dockerfile_text(config, fake_lock(config))
    outside = write_config(tmp_path / "svc2", dev_config_document(app={"dir": "../elsewhere"}))
    with pytest.raises(ConfigError, match="is outside"):
        app_location(outside)


def test_measurements_are_parsed_from_nitro_cli_output() -> None:
    stdout = "Using the locally available Docker image...\n" + json.dumps(
        {
            "Measurements": {
                "HashAlgorithm": "Sha384 { ... }",
                **{k: v.upper() if k == "PCR1" else v for k, v in HEX.items()},
            }
        },
        indent=2,
    )
    assert parse_measurements(stdout) == HEX
    unsigned = {k: v for k, v in HEX.items() if k != "PCR8"}
    assert parse_measurements(json.dumps({"Measurements": unsigned})) == unsigned
    with pytest.raises(EnclaveError, match="Measurements.PCR2 is not 96 hex digits"):
        parse_measurements(json.dumps({"Measurements": {"PCR0": "0" * 96, "PCR1": "1" * 96}}))
    with pytest.raises(EnclaveError, match="printed no Measurements JSON"):
        parse_measurements("[ E48 ] EIF building error.")


def test_the_image_tag_is_a_valid_docker_name(tmp_path: Path) -> None:
    config = write_config(tmp_path, dev_config_document(prefix="Team_A.prod"))
    assert image_tag(config) == f"team-a-prod-hello:{__version__}"


def test_expect_compares_the_pcrs_with_a_published_pcr_json(
    app: Config, fakes: Path, tmp_path: Path
) -> None:
    first, _ = run_build(app)
    published = tmp_path / "pcr.json"
    published.write_text((app.base_dir / "artifacts" / "pcr.json").read_text())
    again, lines = run_build(app, expect=published)  # the same source: the same PCRs
    assert again.measurements == first.measurements
    assert f"    PCR0, PCR1 and PCR2 are the ones {published} publishes" in lines
    doc = json.loads(published.read_text())
    doc["PCR2"] = "f" * 96  # another kernel or bootstrap (another nitro-cli)
    published.write_text(json.dumps(doc))
    with pytest.raises(EnclaveError) as caught:
        run_build(app, expect=published)
    message = str(caught.value)
    assert message.startswith(
        f"the image does not reproduce {published}: PCR2: built {first.measurements['PCR2'][:16]}"
        "…, expected ffffffffffffffff… (it records BuildContext "
    )
    assert "PCR0" not in message and "NitroCLI Nitro CLI 1.3.1" in message
    (app.base_dir / "app.py").write_text("print('not what was published')\n")
    with pytest.raises(EnclaveError, match="PCR0: built .*PCR1: built"):
        run_build(app, expect=published)


@pytest.mark.parametrize(("buildx", "rewrites"), [("v0.13.1", True), ("v0.12.5", False)])
def test_buildkit_rewrites_layer_timestamps_when_it_can(
    app: Config, fakes: Path, monkeypatch: pytest.MonkeyPatch, buildx: str, rewrites: bool
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_BUILDX", buildx)
    run_build(app)
    (build_call,) = [call for call in calls(fakes, "docker") if call[0] == "build"]
    output = ["--output", "type=docker,rewrite-timestamp=true"]
    assert (build_call[-3:-1] == output) is rewrites
    assert ["buildx", "version"] in calls(fakes, "docker")
