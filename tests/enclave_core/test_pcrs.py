"""enclave_core.pcrs: one PCR syntax everywhere, and the debug-mode PCR0 refused by name."""

from __future__ import annotations

import pytest

from enclave_core.errors import ValidationError
from enclave_core.pcrs import PCR_HEX_RE, is_all_zero, normalise_pcr

PCR = "ab" * 48


def test_a_pcr_is_96_hex_characters_returned_lower_case() -> None:
    assert normalise_pcr(PCR.upper()) == PCR
    assert normalise_pcr("0x" + PCR) == PCR
    assert normalise_pcr("0X" + PCR.upper()) == PCR
    assert normalise_pcr(f" {PCR}\n") == PCR  # copied from a terminal or a file
    assert PCR_HEX_RE.match(PCR) and PCR_HEX_RE.fullmatch(PCR.upper())
    assert not PCR_HEX_RE.match(PCR + "\n") and not PCR_HEX_RE.match(PCR + "00")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "got 0 characters"),
        ("ab" * 47, "got 94 characters"),
        ("ab" * 49, "got 98 characters"),
        ("zz" * 48, "not hex"),
        ("0x", "got 0 characters"),
        ("0x0x" + "ab" * 47, "not hex"),
        ("ab" * 24 + " " + "ab" * 24, "got 97 characters"),
    ],
)
def test_a_malformed_pcr_is_refused_naming_what(value: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        normalise_pcr(value, "--pcr0")
    message = str(caught.value)
    assert message.startswith("--pcr0 must be 96 hex digits") and fragment in message


def test_a_non_string_is_refused() -> None:
    with pytest.raises(ValidationError, match="PCR0 must be 96 hex digits"):
        normalise_pcr(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0" * 96, "0x" + "0" * 96, "0X" + "00" * 48 + "\n"])
def test_the_all_zero_pcr0_of_debug_mode_is_refused(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        normalise_pcr(value, "the key's PCR0")
    message = str(caught.value)
    assert message.startswith("the key's PCR0 is all zero")
    assert "every debug-mode enclave reports" in message and "any image" in message


def test_is_all_zero() -> None:
    assert is_all_zero(bytes(48)) and is_all_zero("0" * 96) and is_all_zero("0x" + "0" * 96)
    assert is_all_zero(bytearray(48))
    assert not is_all_zero(b"\x00" * 47 + b"\x01") and not is_all_zero(PCR)
    assert not is_all_zero("0" * 95 + "1") and not is_all_zero("0" * 95 + "z")
    # nothing at all measures nothing: treated like zero, so a check built on it fails closed
    assert is_all_zero(b"") and is_all_zero("")
