"""`enclave build`: the enclave image (EIF) and its PCRs (see :mod:`enclave_core.deploy.build`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from enclave_core.cli.common import EnclaveCommand
from enclave_core.deploy.build import Signing, build
from enclave_core.errors import ValidationError


class Build(EnclaveCommand):
    """Build the enclave image with Docker and nitro-cli; write artifacts/pcr.json.

    Writes artifacts/Dockerfile (the runtime as entry point, the app's files, its command from
    enclave.yaml), runs docker build and nitro-cli build-enclave, and prints PCR0, PCR1, PCR2
    (and PCR8 when signed with --signing-certificate and --private-key).
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """``--signing-certificate``, ``--private-key``, ``--wheel``, ``-f text|json``."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--signing-certificate",
            metavar="<pem>",
            help="sign the EIF with this certificate (adds PCR8); needs --private-key",
        )
        parser.add_argument(
            "--private-key", metavar="<pem>", help="the signing certificate's private key"
        )
        parser.add_argument(
            "--wheel",
            metavar="<file.whl>",
            help="install simple-enclave from this wheel instead of PyPI (an unreleased build)",
        )
        parser.add_argument(
            "-f",
            "--format",
            choices=("text", "json"),
            default="text",
            help="text: numbered progress and the PCRs; json: one object (progress on stderr)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Run the four steps; print the PCRs."""
        certificate, key = parsed_args.signing_certificate, parsed_args.private_key
        if bool(certificate) != bool(key):
            raise ValidationError("--signing-certificate and --private-key go together")
        config = self.load(parsed_args)
        as_json = parsed_args.format == "json"
        progress = self._stderr if as_json else self.write
        if config.mode != "production":
            self._stderr(
                f"warning: mode is {config.mode!r}: an enclave needs mode: production backends "
                "(nitro attestation, aws KMS, ssm secrets, s3 storage)"
            )
        for dotted, var in sorted(config.env_refs.items()):
            self._stderr(
                f"warning: {dotted} comes from $env {var}, which the enclave does not have: "
                "the runtime will not load enclave.yaml there"
            )
        signing = Signing(Path(certificate), Path(key)) if certificate else None

        def echo(line: str) -> None:  # the tools' output, under the step; blank lines dropped
            if line.strip():
                progress(f"    {line}")

        result = build(
            config,
            progress=progress,
            echo=echo,
            signing=signing,
            wheel=Path(parsed_args.wheel) if parsed_args.wheel else None,
        )
        if as_json:
            doc = {
                **{name.upper(): value for name, value in result.measurements.items()},
                "eif": str(result.eif),
                "image": result.image,
                "pcr_file": str(result.pcr_file),
            }
            self.write(json.dumps(doc, indent=2))
            return 0
        for name, value in result.measurements.items():
            self.write(f"{name}: {value}")
        self.write(f"wrote {result.eif} and {result.pcr_file}")
        return 0

    def _stderr(self, text: str) -> None:
        self.app.stderr.write(text + "\n")
        self.app.stderr.flush()
