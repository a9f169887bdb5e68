"""`enclave lock`: pin the base image and every wheel the enclave image installs
(see :mod:`enclave_core.deploy.lock`)."""

from __future__ import annotations

import argparse

from enclave_core.cli.common import EnclaveCommand
from enclave_core.deploy.layout import BASE_IMAGE
from enclave_core.deploy.lock import make_lock, read_lock, write_lock
from enclave_core.deploy.registry import DIGEST, resolve_digest
from enclave_core.errors import ValidationError


class Lock(EnclaveCommand):
    """Write enclave.lock: the base image's digest and every wheel the image installs, by hash.

    Resolves simple-enclave of this version (artifacts/wheels/ first) and the app's
    requirements.txt for the enclave's platform (CPython 3.11 on manylinux, the architecture of
    instance_type), and the app's last commit time as SOURCE_DATE_EPOCH. Commit the file: enclave
    build installs exactly what it names, and refuses it once it no longer matches.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        """``--base-digest``, ``--source-date-epoch``."""
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--base-digest",
            metavar="sha256:<hex>",
            help=f"the digest of {BASE_IMAGE} (default: asked from its registry)",
        )
        parser.add_argument(
            "--source-date-epoch",
            metavar="<seconds>",
            type=int,
            help="the timestamp of every file in the build context (default: the app's last "
            "commit, else now)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        """Resolve, write, say what changed."""
        config = self.load(parsed_args)
        digest = parsed_args.base_digest
        if digest is not None and not DIGEST.match(digest):
            raise ValidationError("--base-digest must be sha256: and 64 lower-case hex digits")
        epoch = parsed_args.source_date_epoch
        if epoch is not None and epoch < 0:
            raise ValidationError("--source-date-epoch must be a number of seconds, 0 or more")
        before = read_lock(config)
        if digest is None:
            self.write(f"resolving the digest of {BASE_IMAGE}")
            digest = resolve_digest(BASE_IMAGE)
        self.write("resolving the wheels (pip download)")
        lock = make_lock(
            config,
            base_digest=digest,
            echo=lambda line: self.write(f"    {line}") if line.strip() else None,
            epoch=epoch,
        )
        path = write_lock(config, lock)
        self.write(f"wrote {path}: {lock.base}, {len(lock.wheels)} wheels for {lock.arch}")
        if before is not None:
            old = {w.filename for w in before.wheels}
            new = {w.filename for w in lock.wheels}
            for name in sorted(new - old):
                self.write(f"  + {name}")
            for name in sorted(old - new):
                self.write(f"  - {name}")
            if before.base_digest != lock.base_digest:
                self.write(f"  base image: {before.base_digest} -> {lock.base_digest}")
        return 0
