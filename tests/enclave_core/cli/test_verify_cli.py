"""`enclave verify`, run through the `enclave` cliff App against a scripted HTTPS enclave."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_core.cli.verify import Verify
from enclave_core.verify import HTTPS_REQUIRED
from tests.doubles.fake_enclave import FakeEnclave
from tests.helpers import cli

#: Only `enclave verify`, registered without the entry points.
ONLY_VERIFY = {"verify": Verify}

ERROR_PREFIX = "ERROR: "


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeEnclave]:
    server = FakeEnclave(tmp_path)
    yield server
    server.close()


def failed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """A failing run: exit 1, nothing on stdout, exactly one ERROR line; return its text."""
    code, out, err = cli(capsys, "verify", *args, commands=ONLY_VERIFY)
    assert (code, out) == (1, ""), err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err
    return lines[0][len(ERROR_PREFIX) :]


def test_verify_prints_the_verified_facts(
    capsys: pytest.CaptureFixture[str], fake: FakeEnclave
) -> None:
    args = ["--url", fake.url, "--expected-pcr0", fake.pcr0.hex(), "--root", str(fake.root_pem)]
    code, out, err = cli(capsys, "verify", *args, "-f", "json", commands=ONLY_VERIFY)
    assert (code, err) == (0, "")
    result = json.loads(out)
    assert result["verified"] is True and result["url"] == fake.url
    assert result["pcr0"] == fake.pcr0.hex() and result["tls_cert_sha256"] == fake.tls.sha256
    assert result["previous_pcr0"] == "genesis" and len(result["nonce"]) == 40
    # The default table works as well.
    code, out, _ = cli(capsys, "verify", *args, commands=ONLY_VERIFY)
    assert code == 0 and "verified" in out and fake.tls.sha256 in out


def test_a_tampered_pcr0_is_one_error_line(
    capsys: pytest.CaptureFixture[str], fake: FakeEnclave
) -> None:
    wrong = ("1" if fake.pcr0.hex()[0] == "0" else "0") + fake.pcr0.hex()[1:]
    message = failed(
        capsys, "--url", fake.url, "--expected-pcr0", wrong, "--root", str(fake.root_pem)
    )
    assert message == f"PCR0 mismatch: expected {wrong}, got {fake.pcr0.hex()}"


def test_the_aws_root_is_the_default(capsys: pytest.CaptureFixture[str], fake: FakeEnclave) -> None:
    message = failed(capsys, "--url", fake.url, "--expected-pcr0", fake.pcr0.hex())
    assert message.startswith("certificate chain:")


def test_an_unsigned_answer_fails(capsys: pytest.CaptureFixture[str], fake: FakeEnclave) -> None:
    fake.behaviour.sign = False
    args = ["--url", fake.url, "--expected-pcr0", fake.pcr0.hex(), "--root", str(fake.root_pem)]
    assert "no X-Attestation-Signature header" in failed(capsys, *args)


def test_arguments_are_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pcr0 = "ab" * 48
    assert failed(capsys, "--url", "http://127.0.0.1:1", "--expected-pcr0", pcr0) == HTTPS_REQUIRED
    assert "96 hex" in failed(capsys, "--url", "https://127.0.0.1:1", "--expected-pcr0", "abc")
    missing = str(tmp_path / "none.pem")
    message = failed(
        capsys, "--url", "https://127.0.0.1:1", "--expected-pcr0", pcr0, "--root", missing
    )
    assert "cannot read" in message
    # --expected-pcr0 is mandatory.
    code, _, err = cli(capsys, "verify", "--url", "https://127.0.0.1:1", commands=ONLY_VERIFY)
    assert code == 2 and "--expected-pcr0" in err
