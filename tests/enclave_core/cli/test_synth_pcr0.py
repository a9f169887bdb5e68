"""`enclave synth` refuses a PCR0 that no production key may be locked to, before aws-cdk-lib.

The rest of `enclave synth` is tested with the infra (tests/infra/test_synth_cli.py); these
refusals happen before aws-cdk-lib is imported, so they run without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave_core.cli.main import main

PRODUCTION = (
    "name: hello\nmode: production\nstorage: {backend: s3, options: {bucket: b}}\n"
    "secrets: {backend: ssm}\nkms: {backend: aws}\nattestation: {backend: nitro}\n"
    "launcher: {backend: nitro-cli}\n"
)
ZERO = "00" * 48


def synth(capsys: pytest.CaptureFixture[str], project: Path, *args: str) -> tuple[int, str]:
    code = main(["synth", "-c", str(project), "-o", str(project.parent / "out"), *args])
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "enclave.yaml"
    path.write_text(PRODUCTION)
    return path


@pytest.mark.parametrize("pcr0", [ZERO, "0x" + ZERO, ZERO.upper()])
def test_the_debug_mode_pcr0_is_refused(
    capsys: pytest.CaptureFixture[str], project: Path, pcr0: str
) -> None:
    code, err = synth(capsys, project, "--pcr0", pcr0)
    assert code == 1
    assert err.startswith("ERROR: --pcr0 is all zero") and "debug-mode" in err
    assert not (project.parent / "out").exists()


def test_the_debug_mode_pcr0_of_pcr_json_is_refused(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    (project.parent / "artifacts").mkdir()
    pcrs = {"PCR0": ZERO, "PCR1": ZERO, "PCR2": ZERO}
    (project.parent / "artifacts" / "pcr.json").write_text(json.dumps(pcrs))
    code, err = synth(capsys, project)
    assert code == 1 and "PCR0 of " in err and "is all zero" in err and "debug-mode" in err


def test_a_malformed_pcr0_is_refused(capsys: pytest.CaptureFixture[str], project: Path) -> None:
    code, err = synth(capsys, project, "--pcr0", "ab" * 47)
    assert code == 1 and err.startswith("ERROR: --pcr0 must be 96 hex digits")
