"""`enclave synth` and :func:`enclave_infra.synth.synthesize`: templates written offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from enclave_infra.synth import synthesize

from enclave_core.cli.synth import INFRA_MISSING
from enclave_core.config import load_config
from enclave_core.errors import ConfigError
from tests.helpers import cli
from tests.infra.synthesis import PCR0, write_production_config

OTHER_PCR0 = "0a" * 48


def _key_policy(template: Path) -> dict[str, Any]:
    resources = json.loads(template.read_text())["Resources"]
    (key,) = [r for r in resources.values() if r["Type"] == "AWS::KMS::Key"]
    policy: dict[str, Any] = key["Properties"]["KeyPolicy"]
    return policy


def _locked_to(policy: dict[str, Any]) -> list[str]:
    """The PCR0 values the policy's attested-decrypt statement admits."""
    [decrypt] = [s for s in policy["Statement"] if s["Sid"] == "EnclaveDecryptWithAttestation"]
    value = decrypt["Condition"]["StringEqualsIgnoreCase"]["kms:RecipientAttestation:PCR0"]
    return value if isinstance(value, list) else [value]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A production enclave.yaml with the artifacts/pcr.json that `enclave build` writes."""
    write_production_config(tmp_path)
    (tmp_path / "artifacts").mkdir()
    pcrs = {"PCR0": PCR0.upper(), "PCR1": "11" * 48, "PCR2": "22" * 48}
    (tmp_path / "artifacts" / "pcr.json").write_text(json.dumps(pcrs))
    return tmp_path / "enclave.yaml"


def test_synth_writes_the_template_locked_to_pcr_json(
    capsys: pytest.CaptureFixture[str], project: Path, tmp_path: Path
) -> None:
    outdir = tmp_path / "out" / "cdk.out"
    code, out, err = cli(capsys, "synth", "-c", str(project), "-o", str(outdir), "-f", "json")
    assert (code, err) == (0, "")
    template = outdir / "devNitrohello.template.json"
    assert json.loads(out) == [{"Stack": "devNitrohello", "Template": str(template)}]
    assert _locked_to(_key_policy(template)) == [PCR0]  # pcr.json's, lower-cased
    # A complete cloud assembly: `cdk deploy --app DIR` takes the folder as it is.
    manifest = json.loads((outdir / "manifest.json").read_text())
    assert manifest["artifacts"]["devNitrohello"]["type"] == "aws:cloudformation:stack"


def test_pcr0_option_wins_over_pcr_json(
    capsys: pytest.CaptureFixture[str], project: Path, tmp_path: Path
) -> None:
    outdir = tmp_path / "out"
    code, out, err = cli(
        capsys, "synth", "-c", str(project), "-o", str(outdir), "--pcr0", OTHER_PCR0, "-f", "value"
    )
    assert (code, err) == (0, "")
    assert out.split() == ["devNitrohello", str(outdir / "devNitrohello.template.json")]
    assert _locked_to(_key_policy(outdir / "devNitrohello.template.json")) == [OTHER_PCR0]


def test_synthesize_reports_stack_names_and_template_paths(tmp_path: Path) -> None:
    config = write_production_config(tmp_path / "app", prefix="prod_eu", instances=2)
    result = synthesize(config, tmp_path / "assembly", pcr0=PCR0)
    assert result.outdir == (tmp_path / "assembly").resolve()
    assert result.stack_names == ["prod-euNitrohello"]
    template = result.templates["prod-euNitrohello"]
    assert template == result.outdir / "prod-euNitrohello.template.json"
    outputs = json.loads(template.read_text())["Outputs"]
    assert "LoadBalancerDNS" in outputs


def test_without_pcr_json_or_pcr0_it_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write_production_config(tmp_path)
    code, out, err = cli(capsys, "synth", "-c", str(tmp_path / "enclave.yaml"), "-o", "x")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"ERROR: {tmp_path}/artifacts/pcr.json: no such file; run `enclave build` or give "
        "--pcr0 HEX"
    ]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("pcr_json", "message"),
    [
        ('{"PCR1": "aa"}', "no PCR0 string in it"),
        ("not json", "cannot read the PCRs"),
        ('{"PCR0": "abc"}', "must be 96 hex digits (a SHA-384), optionally prefixed 0x; got 3"),
    ],
)
def test_a_bad_pcr_json_is_one_error_line(
    capsys: pytest.CaptureFixture[str], project: Path, pcr_json: str, message: str
) -> None:
    (project.parent / "artifacts" / "pcr.json").write_text(pcr_json)
    code, _, err = cli(capsys, "synth", "-c", str(project), "-o", str(project.parent / "o"))
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("ERROR: ") and message in err


def test_an_instance_type_without_enclaves_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write_production_config(tmp_path, instance_type="t3.xlarge")
    code, _, err = cli(
        capsys, "synth", "-c", str(tmp_path / "enclave.yaml"), "-o", "o", "--pcr0", PCR0
    )
    assert code == 1
    assert err.startswith("ERROR: instance_type 't3.xlarge' is not a Nitro Enclaves instance type")
    assert len(err.splitlines()) == 1


def test_without_the_infra_extra_it_says_what_to_install(
    capsys: pytest.CaptureFixture[str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "aws_cdk", None)  # what an install without the extra sees
    code, _, err = cli(capsys, "synth", "-c", str(project), "-o", str(project.parent / "o"))
    assert (code, err) == (1, f"ERROR: {INFRA_MISSING}\n")
    assert INFRA_MISSING == (
        "enclave synth needs the infra extra: pip install 'simple-enclave[infra]'"
    )


def test_the_stack_name_needs_a_prefix_starting_with_a_letter(tmp_path: Path) -> None:
    config = write_production_config(tmp_path, prefix="1st")
    with pytest.raises(ConfigError, match="must start with a letter"):
        synthesize(config, tmp_path / "o", pcr0=PCR0)


def test_an_enclave_yaml_without_account_gets_generated_bucket_names(tmp_path: Path) -> None:
    document_folder = tmp_path / "app"
    write_production_config(document_folder, account=None, storage={"backend": "s3"})
    config = load_config(document_folder / "enclave.yaml")
    result = synthesize(config, tmp_path / "o", pcr0=PCR0)
    resources = json.loads(result.templates["devNitrohello"].read_text())["Resources"]
    buckets = [r for r in resources.values() if r["Type"] == "AWS::S3::Bucket"]
    assert len(buckets) == 3 and all("BucketName" not in b["Properties"] for b in buckets)
