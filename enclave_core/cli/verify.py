"""`enclave verify`: check a live enclave over HTTPS (see :mod:`enclave_core.verify`)."""

from __future__ import annotations

import argparse
from typing import Any

from enclave_core.cli.common import EnclaveShowOne, show_mapping
from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.pcrs import normalise_pcr
from enclave_core.verify import parse_expected_pcr0, verify_enclave


class Verify(EnclaveShowOne):
    """Verify a live enclave: attestation, PCR0, its TLS certificate and a signed response.

    Fetches an attestation document with a fresh random nonce over a TLS connection that trusts
    no CA, verifies it at the present time against the pinned AWS Nitro root G1 (or ``--root``;
    for `enclave dev`: ``.enclave/dev-root.pem``), requires the nonce and ``--expected-pcr0``,
    refuses debug-mode documents, pins the certificate of that connection to the hash in the
    document's user_data, verifies an ``/v1/enclave-info`` answer signed by the attested key over
    a fresh nonce, and checks the migration chain it reports: every link back to the first image,
    each predecessor in ``--allow-previous-pcr0`` when given, and no "genesis" claim from an
    enclave whose key a migration made. Every check is mandatory: the first that fails prints
    one ``ERROR:`` line naming it and exits 1. ``-c`` is accepted, as on every command, but not
    read.
    """

    config_default = None

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """Add --url, --expected-pcr0, --root, --allow-previous-pcr0 and --timeout."""
        parser = super().get_parser(prog_name)
        for action in parser._actions:
            if action.dest == "config":
                action.help = "accepted as on every command; not used (no enclave.yaml needed)"
        parser.add_argument(
            "--url", required=True, metavar="URL", help="the enclave's base URL (https://HOST:PORT)"
        )
        parser.add_argument(
            "--expected-pcr0",
            required=True,
            metavar="HEX",
            help="the PCR0 the enclave must run (96 hex characters, e.g. from `enclave build`)",
        )
        parser.add_argument(
            "--root",
            metavar="PEM",
            help="trusted root certificate (default: the pinned AWS Nitro Enclaves root G1)",
        )
        parser.add_argument(
            "--allow-previous-pcr0",
            action="append",
            metavar="HEX",
            help="a predecessor image you accept (repeatable): every image the secrets came "
            "through must be one of these (default: any the chain proves)",
        )
        parser.add_argument(
            "--timeout", type=float, default=10.0, metavar="SECONDS", help="network timeout"
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        """Run every check; return the verified facts or raise AttestationError naming a check."""
        # Arguments first, so a typo is reported before any network traffic.
        expected = parse_expected_pcr0(parsed_args.expected_pcr0)
        root = load_root_pem(parsed_args.root) if parsed_args.root is not None else None
        allowed = None
        if parsed_args.allow_previous_pcr0:
            allowed = frozenset(
                normalise_pcr(value, "--allow-previous-pcr0")
                for value in parsed_args.allow_previous_pcr0
            )
        result = verify_enclave(
            parsed_args.url,
            expected,
            root=root,
            timeout=parsed_args.timeout,
            allowed_previous=allowed,
        )
        return show_mapping(result.as_dict())
