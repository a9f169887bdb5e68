"""End to end: `enclave dev` serves attested TLS on its ingress and `enclave verify` checks it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import DevStack, http, make_stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[DevStack]:
    yield from make_stack(tmp_path / "hello", runtime={"tls": True}).running()


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), stderr
    return lines[0]


def test_enclave_verify_passes_against_dev_and_fails_on_a_tampered_pcr0(stack: DevStack) -> None:
    assert stack.ingress_url.startswith("https://")
    assert "Hello from Simple Enclave" in stack.greeting()  # the app, through TLS
    # The supervisor reads the runtime's public listener over TLS too.
    status, _, body = http("GET", stack.supervisor_url + "/v1/enclave-info")
    info = json.loads(body)
    assert status == 200 and len(info["pcr0"]) == 96 and len(info["tls_cert_sha256"]) == 64
    root = str(stack.folder / ".enclave" / "dev-root.pem")
    url = stack.ingress_url

    done = stack.cli("verify", "--url", url, "--expected-pcr0", info["pcr0"], "--root", root)
    assert done.returncode == 0, done.stderr
    done = stack.cli(
        "verify", "--url", url, "--expected-pcr0", info["pcr0"], "--root", root, "-f", "json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verified"] is True and result["pcr0"] == info["pcr0"]
    assert result["tls_cert_sha256"] == info["tls_cert_sha256"]
    assert result["attestation_pubkey"] == info["attestation_pubkey"]

    pcr0 = info["pcr0"]
    tampered = ("0" if pcr0[0] != "0" else "1") + pcr0[1:]
    done = stack.cli("verify", "--url", url, "--expected-pcr0", tampered, "--root", root)
    assert done.returncode == 1 and done.stdout == ""
    assert one_error_line(done.stderr) == f"ERROR: PCR0 mismatch: expected {tampered}, got {pcr0}"

    done = stack.cli("verify", "--url", url, "--expected-pcr0", pcr0)  # the AWS root
    assert done.returncode == 1
    assert one_error_line(done.stderr).startswith("ERROR: certificate chain:")

    plain = url.replace("https://", "http://")
    done = stack.cli("verify", "--url", plain, "--expected-pcr0", pcr0, "--root", root)
    assert done.returncode == 1 and "needs https" in one_error_line(done.stderr)
