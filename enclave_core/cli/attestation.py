"""`enclave attestation verify`: check a Nitro attestation document file offline."""

from __future__ import annotations

import argparse
import base64
import binascii
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from enclave_core.cli.common import EnclaveShowOne, show_mapping
from enclave_core.crypto.attestation import PCR_SIZE, VerifiedDocument, verify_document
from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.errors import AttestationError

#: The PCRs the command prints (the six AWS defines for enclaves).
SHOWN_PCRS = (0, 1, 2, 3, 4, 8)
_CBOR_STARTS = (0x84, 0xD2)  # untagged COSE_Sign1 array, or tag 18
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def decode_input(raw: bytes, source: str) -> bytes:
    """Return the document bytes from ``raw``: CBOR as is, else hex, else base64.

    Raw CBOR is recognised by its first byte (0x84 or 0xd2); text has its whitespace removed and
    is tried as hex, then as base64 (standard or URL-safe alphabet, padding optional).
    """
    if not raw:
        raise AttestationError(f"{source}: the file is empty")
    if raw[0] in _CBOR_STARTS:
        return raw
    try:
        compact = "".join(raw.decode("ascii").split())
    except UnicodeDecodeError:
        compact = ""
    if compact and len(compact) % 2 == 0 and all(c in string.hexdigits for c in compact):
        return bytes.fromhex(compact)
    if compact:
        padded = compact + "=" * (-len(compact) % 4)
        for altchars in (None, b"-_"):
            try:
                return base64.b64decode(padded, altchars=altchars, validate=True)
            except (binascii.Error, ValueError):
                continue
    raise AttestationError(
        f"{source}: not an attestation document: neither CBOR (first byte 0x84 or 0xd2), "
        "hex nor base64"
    )


def parse_time(value: str) -> datetime:
    """Parse ``--at``: ISO-8601 (UTC when no offset is given), epoch milliseconds, or ``now``."""
    text = value.strip()
    if text.lower() == "now":
        return datetime.now(UTC)
    try:
        if text.isdigit():
            return _EPOCH + timedelta(milliseconds=int(text))
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise AttestationError(
            f"--at: {value!r} is not an ISO-8601 time, epoch milliseconds or 'now'"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_pcr(value: str, option: str) -> bytes:
    """Parse a PCR given as 96 hex characters (48 bytes)."""
    text = value.strip().lower().removeprefix("0x")
    if len(text) != 2 * PCR_SIZE or not all(c in string.hexdigits for c in text):
        raise AttestationError(
            f"{option}: expected {2 * PCR_SIZE} hex characters ({PCR_SIZE} bytes)"
        )
    return bytes.fromhex(text)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summarize(document: VerifiedDocument) -> dict[str, Any]:
    """The fields the command shows for a verified document, in display order."""
    summary: dict[str, Any] = {
        "module_id": document.module_id,
        "timestamp": _iso(document.timestamp),
        "digest": document.digest,
    }
    for index in SHOWN_PCRS:
        value = document.pcrs.get(index)
        summary[f"PCR{index}"] = value.hex() if value is not None else None
    summary.update(
        debug_mode=document.debug_mode,
        user_data_present=document.user_data is not None,
        nonce_present=document.nonce is not None,
        public_key_present=document.public_key is not None,
        verified_at=_iso(document.verified_at),
        verified=True,
    )
    return summary


class VerifyAttestation(EnclaveShowOne):
    """Verify a Nitro attestation document: envelope, fields, certificate chain, signature.

    FILE holds the document as raw CBOR, hex or base64 (``-`` reads standard input). The chain
    is checked against the pinned AWS Nitro root G1, or ``--root`` (for `enclave dev`:
    ``.enclave/dev-root.pem``), at the document's own timestamp unless ``--at`` says otherwise:
    pass ``--at now`` to check a live document, since an archived one verifies only at its own
    time. Any failed check prints one ``ERROR:`` line naming it and exits 1. ``-c`` is accepted,
    as on every command, but this command does not read enclave.yaml.
    """

    config_default = None

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """Add FILE, --root, --at and --expected-pcr0."""
        parser = super().get_parser(prog_name)
        for action in parser._actions:
            if action.dest == "config":
                action.help = "accepted as on every command; not used (no enclave.yaml needed)"
        parser.add_argument(
            "file", metavar="FILE", help="the attestation document (CBOR, hex or base64; - = stdin)"
        )
        parser.add_argument(
            "--root",
            metavar="PEM",
            help="trusted root certificate (default: the pinned AWS Nitro Enclaves root G1)",
        )
        parser.add_argument(
            "--at",
            metavar="TIME",
            help="check the certificates at TIME: ISO-8601, epoch milliseconds or 'now' "
            "(default: the document's timestamp)",
        )
        parser.add_argument(
            "--expected-pcr0", metavar="HEX", help="require this PCR0 (96 hex characters)"
        )
        return parser

    def _read(self, name: str) -> bytes:
        if name == "-":
            stream = getattr(self.app.stdin, "buffer", self.app.stdin)
            data = stream.read()
            return data.encode() if isinstance(data, str) else bytes(data)
        try:
            return Path(name).read_bytes()
        except OSError as exc:
            raise AttestationError(f"{name}: cannot read the file ({exc.strerror})") from None

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        """Verify the document and return its summary; raise AttestationError on any failure."""
        # Options first, so a typo is reported before any work on the document.
        root = load_root_pem(parsed_args.root) if parsed_args.root is not None else None
        at = parse_time(parsed_args.at) if parsed_args.at is not None else None
        expected = None
        if parsed_args.expected_pcr0 is not None:
            expected = {0: parse_pcr(parsed_args.expected_pcr0, "--expected-pcr0")}
        source = "standard input" if parsed_args.file == "-" else parsed_args.file
        data = decode_input(self._read(parsed_args.file), source)
        document = verify_document(data, root=root, at=at, expected_pcrs=expected)
        return show_mapping(summarize(document))
