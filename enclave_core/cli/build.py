"""`enclave build`: the enclave image (EIF) and its PCRs (see :mod:`enclave_core.deploy.build`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from enclave_core.cli.common import EnclaveCommand
from enclave_core.deploy.build import Signing, build, build_context_only
from enclave_core.errors import ValidationError


class Build(EnclaveCommand):
    """Build the enclave image with Docker and nitro-cli; write artifacts/pcr.json.

    Writes the build context artifacts/context from enclave.lock (made on the first build: the
    base image by digest, every wheel by hash; same source, same bytes), runs docker build and
    nitro-cli build-enclave, and prints PCR0, PCR1, PCR2 (and PCR8 when signed with
    --signing-certificate and --private-key). --expect checks them against a published pcr.json.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """``--signing-certificate``, ``--private-key``, ``--wheel``, ``--context-only``,
        ``--expect``, ``-f text|json``."""
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
            "--context-only",
            metavar="<dir>",
            help="write the build context (from enclave.lock) to this folder and print its "
            "digest; no Docker, no nitro-cli",
        )
        parser.add_argument(
            "--expect",
            metavar="<pcr.json>",
            help="fail unless the PCRs built are the ones this published pcr.json holds",
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

        if parsed_args.context_only:
            if signing or parsed_args.expect or parsed_args.wheel:
                raise ValidationError(
                    "--context-only writes the context only: no --wheel, --expect or signing"
                )
            context = build_context_only(
                config, Path(parsed_args.context_only), progress=progress, echo=echo
            )
            if as_json:
                doc = {"context": str(context.folder), "digest": context.digest,
                       "files": list(context.files)}  # fmt: skip
                self.write(json.dumps(doc, indent=2))
            else:
                self.write(f"{context.digest}  {context.folder} ({len(context.files)} files)")
            return 0
        result = build(
            config,
            progress=progress,
            echo=echo,
            signing=signing,
            wheel=Path(parsed_args.wheel) if parsed_args.wheel else None,
            expect=Path(parsed_args.expect) if parsed_args.expect else None,
        )
        if as_json:
            doc = {
                **{name.upper(): value for name, value in result.measurements.items()},
                "eif": str(result.eif),
                "image": result.image,
                "pcr_file": str(result.pcr_file),
                "context_digest": result.context_digest,
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
