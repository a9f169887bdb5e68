"""The AWS Nitro Enclaves root certificate (G1), shipped in the package and pinned.

``aws-nitro-enclaves-root-G1.pem`` beside this module is the ``root.pem`` of the
``AWS_NitroEnclaves_Root-G1.zip`` AWS publishes. It is only trusted after the SHA-256 of its DER
encoding matches :data:`AWS_ROOT_G1_SHA256`, the fingerprint AWS documents; a modified file is
refused instead of silently becoming a trust anchor.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enclave_core.errors import AttestationError

#: SHA-256 of the DER root certificate, as AWS publishes it (lower-case hex).
AWS_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
#: The package file holding the root certificate (PEM).
AWS_ROOT_G1_FILE = "aws-nitro-enclaves-root-G1.pem"


def fingerprint_sha256(certificate: x509.Certificate) -> str:
    """Return the lower-case hex SHA-256 of ``certificate``'s DER encoding."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _parse_single_pem(data: bytes, source: str) -> x509.Certificate:
    """Parse exactly one PEM certificate from ``data``; ``source`` names it in errors."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise AttestationError(
            f"root certificate {source}: not a PEM certificate ({exc})"
        ) from None
    if len(certificates) != 1:
        raise AttestationError(
            f"root certificate {source}: expected exactly one certificate, "
            f"found {len(certificates)}"
        )
    return certificates[0]


def load_root_pem(path: str | Path) -> x509.Certificate:
    """Load a trust anchor (one PEM certificate) from ``path``, e.g. ``.enclave/dev-root.pem``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AttestationError(f"root certificate {path}: cannot read ({exc.strerror})") from None
    return _parse_single_pem(data, str(path))


@functools.cache
def aws_nitro_root() -> x509.Certificate:
    """Return the pinned AWS Nitro Enclaves root G1; refuse a file whose fingerprint differs."""
    try:
        data = resources.files("enclave_core.crypto").joinpath(AWS_ROOT_G1_FILE).read_bytes()
    except OSError as exc:
        raise AttestationError(
            f"AWS Nitro root: package file {AWS_ROOT_G1_FILE} is missing ({exc})"
        ) from None
    certificate = _parse_single_pem(data, AWS_ROOT_G1_FILE)
    actual = fingerprint_sha256(certificate)
    if actual != AWS_ROOT_G1_SHA256:
        raise AttestationError(
            f"AWS Nitro root: {AWS_ROOT_G1_FILE} has SHA-256 {actual}, expected the pinned "
            f"{AWS_ROOT_G1_SHA256}; refusing to use it"
        )
    return certificate
