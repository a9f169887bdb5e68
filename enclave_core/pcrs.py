"""PCR values as the project names them: 96 hex characters, and never the debug-mode zeros.

A PCR is a SHA-384 digest: 48 bytes, 96 hex characters (``0x`` and upper case accepted on input,
lower case after :func:`normalise_pcr`). A debug-mode enclave reports PCR0, PCR1 and PCR2 as 48
zero bytes whatever it runs, so :func:`normalise_pcr` refuses the all-zero PCR0 wherever a PCR is
named as something to trust (docs/threat-model.md, P3).
"""

from __future__ import annotations

import re

from enclave_core.errors import ValidationError

__all__ = ["PCR_HEX_CHARS", "PCR_HEX_RE", "is_all_zero", "normalise_pcr"]

PCR_BYTES = 48
PCR_HEX_CHARS = 2 * PCR_BYTES
#: Exactly 96 hex characters (no prefix); anchored so that ``match`` and ``fullmatch`` agree and
#: a trailing newline does not slip through as ``$`` would let it.
PCR_HEX_RE = re.compile(rf"\A[0-9a-fA-F]{{{PCR_HEX_CHARS}}}\Z")


def _bare(value: str) -> str:
    """``value`` without surrounding whitespace and one ``0x`` prefix."""
    text = value.strip()
    return text[2:] if text[:2] in ("0x", "0X") else text


def normalise_pcr(value: str, what: str = "PCR0") -> str:
    """Return ``value`` as 96 lower-case hex characters.

    :param value: 96 hex characters, optionally prefixed ``0x``; surrounding whitespace is ignored.
    :param what: names the value in errors (an option, a field, a file).
    :raises ValidationError: naming ``what``, when ``value`` is not 96 hex characters, or when it
        is all zero (what every debug-mode enclave reports: trusting it admits any image).
    """
    if not isinstance(value, str):
        raise ValidationError(
            f"{what} must be 96 hex digits (a SHA-384), got {type(value).__name__}"
        )
    text = _bare(value)
    if PCR_HEX_RE.match(text) is None:
        if len(text) != PCR_HEX_CHARS:
            got = f"got {len(text)} characters"
        else:
            got = f"not hex: {next(c for c in text if c not in '0123456789abcdefABCDEF')!r}"
        raise ValidationError(
            f"{what} must be 96 hex digits (a SHA-384), optionally prefixed 0x; {got}"
        )
    if is_all_zero(text):
        raise ValidationError(
            f"{what} is all zero: that is what every debug-mode enclave reports, whatever image "
            "it runs, so trusting it would admit any image the host starts; use the measurement "
            "of a production (non-debug) build"
        )
    return text.lower()


def is_all_zero(hex_or_bytes: str | bytes | bytearray) -> bool:
    """Whether a PCR (raw bytes, or hex with an optional ``0x``) is all zero.

    An empty value counts as all zero: it measures nothing, and a check built on this fails
    closed. Hex that holds anything but zeros (a non-hex character included) is not all zero.
    """
    if isinstance(hex_or_bytes, bytes | bytearray):
        return not any(hex_or_bytes)
    return all(c == "0" for c in _bare(hex_or_bytes))
