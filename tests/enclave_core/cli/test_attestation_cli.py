"""`enclave attestation verify`, run through the `enclave` cliff App with the real documents.

Real hardware documents are the project's own copies under ``tests/data/nitro/``.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import pytest
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.cli.attestation import VerifyAttestation
from tests.helpers import cli
from tests.vectors import NITRO as TESTDATA

#: Only `enclave attestation verify`, registered without the entry points.
ONLY_ATTESTATION_VERIFY = {"attestation verify": VerifyAttestation}

NITRITE = TESTDATA / "nitrite-2024-09-07.cbor"
NITRITE_PCR0 = (
    "e72a46ca80a260fb044a125442f0c7e331813bcbaf9724d9"
    "f3857758992766f2d65710a27aa94ae3949dd54e7c9fe86a"
)
ZERO = "00" * 48
ERROR_PREFIX = "ERROR: "


def verified(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code, out, err = cli(
        capsys, "attestation", "verify", *args, "-f", "json", commands=ONLY_ATTESTATION_VERIFY
    )
    assert (code, err) == (0, "")
    result: dict[str, object] = json.loads(out)
    return result


def failed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run a failing verification: exit 1, nothing on stdout, exactly one ERROR line."""
    code, out, err = cli(capsys, "attestation", "verify", *args, commands=ONLY_ATTESTATION_VERIFY)
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err
    return lines[0][len(ERROR_PREFIX) :]


def test_a_real_document_shows_its_fields(capsys: pytest.CaptureFixture[str]) -> None:
    result = verified(capsys, str(NITRITE))
    assert result == {
        "module_id": "i-0a22e5c5f24d22174-enc0191cceb4289903f",
        "timestamp": "2024-09-07T14:37:39.545Z",
        "digest": "SHA384",
        "PCR0": NITRITE_PCR0,
        "PCR1": result["PCR1"],
        "PCR2": result["PCR2"],
        "PCR3": ZERO,  # no instance role
        "PCR4": result["PCR4"],
        "PCR8": ZERO,  # unsigned image
        "debug_mode": False,
        "user_data_present": True,
        "nonce_present": True,
        "public_key_present": True,
        "verified_at": "2024-09-07T14:37:39.545Z",
        "verified": True,
    }
    assert all(len(str(result[f"PCR{i}"])) == 96 and result[f"PCR{i}"] != ZERO for i in (1, 2, 4))


def test_debug_documents_say_so(capsys: pytest.CaptureFixture[str]) -> None:
    result = verified(capsys, str(TESTDATA / "evervault-debug-2022-10-12.cbor"))
    assert (result["debug_mode"], result["PCR0"], result["PCR1"], result["PCR2"]) == (
        True,
        ZERO,
        ZERO,
        ZERO,
    )
    assert (result["user_data_present"], result["nonce_present"]) == (True, False)


def test_hex_and_base64_files_give_the_same_answer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    raw = (TESTDATA / "evervault-2022-10-13.cbor").read_bytes()
    expected = verified(capsys, str(TESTDATA / "evervault-2022-10-13.cbor"))
    hex_text = raw.hex().upper()
    encodings = {
        "doc.hex": "\n".join(hex_text[i : i + 64] for i in range(0, len(hex_text), 64)) + "\n",
        "doc.b64": base64.encodebytes(raw).decode(),
        "doc.url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    for name, text in encodings.items():
        (tmp_path / name).write_text(text)
        assert verified(capsys, str(tmp_path / name)) == expected, name


def test_standard_input_is_read_with_a_dash(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = base64.b64encode(NITRITE.read_bytes())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text)))
    assert verified(capsys, "-")["PCR0"] == NITRITE_PCR0


def test_at_now_fails_on_the_expired_leaf(capsys: pytest.CaptureFixture[str]) -> None:
    message = failed(capsys, str(NITRITE), "--at", "now")
    assert message.startswith("certificate chain: certificate 4 (leaf, CN=i-0a22e5c5f24d22174-enc")
    assert " expired at 2024-09-07T17:37:39.000Z (checked at " in message


def test_at_accepts_iso_and_epoch_milliseconds(capsys: pytest.CaptureFixture[str]) -> None:
    inside = verified(capsys, str(NITRITE), "--at", "2024-09-07T16:00:00+01:00")
    assert inside["verified_at"] == "2024-09-07T15:00:00.000Z"
    assert verified(capsys, str(NITRITE), "--at", "1725721000000")["verified_at"] == (
        "2024-09-07T14:56:40.000Z"
    )
    naive = verified(capsys, str(NITRITE), "--at", "2024-09-07T15:00:00")
    assert naive["verified_at"] == "2024-09-07T15:00:00.000Z"
    assert "is not valid before 2024-09-07T14:37:36.000Z" in failed(
        capsys, str(NITRITE), "--at", "2024-09-07T14:37:35Z"
    )
    assert failed(capsys, str(NITRITE), "--at", "yesterday") == (
        "--at: 'yesterday' is not an ISO-8601 time, epoch milliseconds or 'now'"
    )


def test_expected_pcr0_must_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert verified(capsys, str(NITRITE), "--expected-pcr0", NITRITE_PCR0.upper())["verified"]
    assert failed(capsys, str(NITRITE), "--expected-pcr0", "ab" * 48) == (
        f"PCR0 mismatch: expected {'ab' * 48}, got {NITRITE_PCR0}"
    )
    assert failed(capsys, str(NITRITE), "--expected-pcr0", "abc") == (
        "--expected-pcr0: expected 96 hex characters (48 bytes)"
    )


def test_the_root_option_selects_the_trust_anchor(capsys: pytest.CaptureFixture[str]) -> None:
    sample = str(TESTDATA / "synthetic" / "dev-sample.cbor")
    dev_root = str(TESTDATA / "synthetic" / "dev-root.pem")
    result = verified(capsys, sample, "--root", dev_root)
    assert (result["module_id"], result["PCR0"]) == (
        "i-0123456789abcdef0-enc0123456789abcdef",
        "aa" * 48,
    )
    assert "is not issued by certificate 0 (trusted root, CN=aws.nitro-enclaves" in failed(
        capsys, sample
    )
    assert "is not issued by certificate 0 (trusted root, CN=dev.nitro-enclaves" in failed(
        capsys, str(NITRITE), "--root", dev_root
    )
    assert "missing.pem: cannot read" in failed(capsys, sample, "--root", "missing.pem")


def test_a_simulated_nsm_document_verifies_now_with_the_dev_root(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    nsm = SimulatedNsm(state_dir=tmp_path / "state", app_dir=tmp_path / "app")
    document = tmp_path / "doc.b64"
    document.write_bytes(base64.b64encode(nsm.attestation(nonce=b"n" * 20)))
    root = str(tmp_path / "state" / "dev-root.pem")
    result = verified(capsys, str(document), "--root", root, "--at", "now", "-c", "unused.yaml")
    assert (result["module_id"], result["nonce_present"]) == (nsm.module_id, True)
    assert result["PCR0"] == nsm.describe_pcr(0).data.hex()


def test_tampered_unreadable_and_foreign_files_fail_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    raw = bytearray(NITRITE.read_bytes())
    raw[-1] ^= 0x01  # the last byte of the signature
    (tmp_path / "tampered.cbor").write_bytes(bytes(raw))
    assert failed(capsys, str(tmp_path / "tampered.cbor")) == (
        "COSE verify: the attestation document signature is invalid"
    )
    (tmp_path / "trailing.cbor").write_bytes(NITRITE.read_bytes() + b"\n")
    assert failed(capsys, str(tmp_path / "trailing.cbor")) == (
        "COSE_Sign1: 1 trailing byte(s) after the CBOR item"
    )
    (tmp_path / "notes.txt").write_text("hello, world!\n")
    assert failed(capsys, str(tmp_path / "notes.txt")).endswith(
        "notes.txt: not an attestation document: neither CBOR (first byte 0x84 or 0xd2), hex "
        "nor base64"
    )
    assert failed(capsys, str(tmp_path / "absent.cbor")).endswith(
        "absent.cbor: cannot read the file (No such file or directory)"
    )
    (tmp_path / "hex-junk.txt").write_text("deadbeef\n")
    assert failed(capsys, str(tmp_path / "hex-junk.txt")).startswith("COSE_Sign1: ")


def test_table_and_value_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(
        capsys, "attestation", "verify", str(NITRITE), commands=ONLY_ATTESTATION_VERIFY
    )
    assert (code, err) == (0, "")
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()]
    rows = [row for row in cells if row]
    assert rows[0] == ["Field", "Value"]
    assert rows[1] == ["module_id", "i-0a22e5c5f24d22174-enc0191cceb4289903f"]
    assert rows[-1] == ["verified", "True"]
    code, out, _ = cli(
        capsys,
        "attestation",
        "verify",
        str(NITRITE),
        "-f",
        "value",
        "--column",
        "PCR0",
        commands=ONLY_ATTESTATION_VERIFY,
    )
    assert (code, out) == (0, NITRITE_PCR0 + "\n")
