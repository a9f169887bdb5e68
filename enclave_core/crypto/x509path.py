"""X.509 path validation for Nitro attestation documents, as AWS documents it.

:func:`verify_chain` builds the path from the trusted root through the document's cabundle to
its certificate and checks every link (EC P-384, ecdsa-with-SHA384, BasicConstraints, KeyUsage,
path lengths, validity at the given time); no CRL is checked. The rules in full:
docs/protocols.md, "Attestation documents".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from enclave_core.errors import AttestationError

#: Critical extensions this validator understands and enforces; any other critical one fails.
PROCESSED_CRITICAL = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})
_MAX_NAME = 160


def _fail(message: str) -> AttestationError:
    return AttestationError(f"certificate chain: {message}")


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class _Link:
    """One certificate of the path with what the checks need, parsed once."""

    certificate: x509.Certificate
    label: str
    extensions: x509.Extensions
    issuer_der: bytes  # the issuer name as encoded in the certificate
    subject_der: bytes  # the subject name as encoded in the certificate

    def value(self, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
        """The extension of type ``kind``, or None when absent."""
        for extension in self.extensions:
            if isinstance(extension.value, kind):
                return extension.value
        return None

    @property
    def basic_constraints(self) -> x509.BasicConstraints | None:
        """BasicConstraints, if present."""
        value = self.value(x509.BasicConstraints)
        return value if isinstance(value, x509.BasicConstraints) else None

    @property
    def key_usage(self) -> x509.KeyUsage | None:
        """KeyUsage, if present."""
        value = self.value(x509.KeyUsage)
        return value if isinstance(value, x509.KeyUsage) else None


def _name_text(certificate: x509.Certificate, which: str = "subject") -> str:
    """The ``which`` name of ``certificate`` as RFC 4514 text, escaped and bounded (untrusted)."""
    try:
        name: x509.Name = getattr(certificate, which)
        text = name.rfc4514_string()
    except Exception:  # a name cryptography parses but cannot render
        return "<unprintable name>"
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= _MAX_NAME else text[: _MAX_NAME - 3] + "..."


def _load(der: bytes, what: str) -> x509.Certificate:
    # asn1crypto reads the serial first: cryptography loads a serial <= 0 (RFC 5280 forbids it)
    # with a mere warning, which a verifier must not let through.
    try:
        serial = asn1_x509.Certificate.load(der, strict=True)["tbs_certificate"]["serial_number"]
        positive = isinstance(serial.native, int) and serial.native > 0
    except Exception as exc:  # asn1crypto raises ValueError and a few others: all "malformed"
        raise _fail(f"{what} is not a valid DER certificate ({exc})") from None
    if not positive:
        raise _fail(f"{what} has a serial number that is not positive")
    try:
        return x509.load_der_x509_certificate(der)
    except Exception as exc:  # ValueError from the strict DER parser
        raise _fail(f"{what} is not a valid DER certificate ({exc})") from None


def _profile(certificate: x509.Certificate, index: int, role: str) -> _Link:
    """Check the algorithm, key and critical-extension rules every certificate must meet."""
    label = f"certificate {index} ({role}, {_name_text(certificate)})"
    oid = certificate.signature_algorithm_oid
    if oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
        raise _fail(f"{label} is signed with {oid.dotted_string}, expected ecdsa-with-SHA384")
    try:
        der = certificate.public_bytes(serialization.Encoding.DER)
        raw = asn1_x509.Certificate.load(der, strict=True)
        tbs = raw["tbs_certificate"]
        same_algorithm = tbs["signature"].dump() == raw["signature_algorithm"].dump()
        # DER wants 0 unused bits here; cryptography ignores the byte, which is not signed.
        unused_bits = raw["signature_value"].contents[:1]
        # The names exactly as encoded: the issuer link is checked byte for byte.
        issuer_der, subject_der = tbs["issuer"].dump(), tbs["subject"].dump()
    except Exception as exc:  # asn1crypto parses lazily and raises several types
        raise _fail(f"{label} cannot be parsed ({exc})") from None
    if not same_algorithm:
        raise _fail(f"{label} names different signature algorithms inside and outside its TBS")
    if unused_bits != b"\x00":
        raise _fail(f"{label} has a signature BIT STRING with unused bits")
    try:
        key = certificate.public_key()
    except Exception as exc:  # unsupported curve or key type
        raise _fail(f"{label} has an unsupported public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise _fail(f"{label} has a {kind} public key, expected EC P-384 (secp384r1)")
    try:
        extensions = certificate.extensions
    except Exception as exc:  # duplicate or malformed extensions
        raise _fail(f"{label} has malformed extensions ({exc})") from None
    for extension in extensions:
        if extension.critical and extension.oid not in PROCESSED_CRITICAL:
            raise _fail(f"{label} has an unknown critical extension {extension.oid.dotted_string}")
    return _Link(certificate, label, extensions, issuer_der, subject_der)


def _check_link(child: _Link, issuer: _Link, below: int) -> None:
    """Check that ``issuer`` may issue ``child`` and did; ``below`` = intermediates under issuer."""
    if child.issuer_der != issuer.subject_der:
        raise _fail(
            f"{child.label} is not issued by {issuer.label}: its issuer name is "
            f"{_name_text(child.certificate, 'issuer')}"
        )
    constraints = issuer.basic_constraints
    if constraints is None or not constraints.ca:
        raise _fail(f"{issuer.label} is not a CA (BasicConstraints CA:TRUE missing)")
    usage = issuer.key_usage
    if usage is None or not usage.key_cert_sign:
        raise _fail(f"{issuer.label} lacks KeyUsage keyCertSign")
    if constraints.path_length is not None and below > constraints.path_length:
        raise _fail(
            f"{issuer.label} has pathLenConstraint {constraints.path_length} but "
            f"{below} intermediate certificate(s) follow it"
        )
    key = issuer.certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):  # _profile already refused other keys
        raise _fail(f"{issuer.label} has no EC public key")
    try:
        key.verify(
            child.certificate.signature,
            child.certificate.tbs_certificate_bytes,
            ec.ECDSA(hashes.SHA384()),
        )
    except (InvalidSignature, ValueError):
        raise _fail(
            f"the signature of {child.label} does not verify with the key of {issuer.label}"
        ) from None


def _check_validity(link: _Link, at: datetime) -> None:
    not_before = link.certificate.not_valid_before_utc
    not_after = link.certificate.not_valid_after_utc
    if at > not_after:
        raise _fail(f"{link.label} expired at {_iso(not_after)} (checked at {_iso(at)})")
    if at < not_before:
        raise _fail(f"{link.label} is not valid before {_iso(not_before)} (checked at {_iso(at)})")


def verify_chain(
    certificate: bytes, cabundle: Sequence[bytes], root: x509.Certificate, at: datetime
) -> x509.Certificate:
    """Validate the path from ``root`` through ``cabundle`` to ``certificate`` at time ``at``.

    ``certificate`` and the ``cabundle`` entries are DER (``cabundle`` root first, as in a Nitro
    document); ``at`` must be timezone-aware. Returns the parsed leaf certificate; raises
    :class:`AttestationError` naming the certificate and the check that failed.
    """
    if at.tzinfo is None:
        raise _fail("the verification time must be timezone-aware")
    if not cabundle:
        raise _fail("the cabundle is empty")
    root_der = root.public_bytes(serialization.Encoding.DER)
    # A cabundle starting with the trusted root is the normal case; otherwise every entry is an
    # intermediate, and the first must then be issued by the trusted root.
    skip = 1 if bytes(cabundle[0]) == root_der else 0
    intermediates = [
        _load(bytes(der), f"cabundle[{k}]") for k, der in enumerate(cabundle) if k >= skip
    ]
    leaf_certificate = _load(bytes(certificate), "the document's certificate")
    certificates = [root, *intermediates, leaf_certificate]
    last = len(certificates) - 1
    roles = ["trusted root", *(f"cabundle[{k + skip}]" for k in range(len(intermediates))), "leaf"]
    path = [_profile(c, i, roles[i]) for i, c in enumerate(certificates)]
    for index in range(1, len(path)):
        _check_link(path[index], path[index - 1], below=last - index)
    leaf = path[-1]
    constraints = leaf.basic_constraints
    if constraints is not None and constraints.ca:
        raise _fail(f"{leaf.label} is a CA (BasicConstraints CA:TRUE); a signing leaf must not be")
    usage = leaf.key_usage
    if usage is None or not usage.digital_signature:
        raise _fail(f"{leaf.label} lacks KeyUsage digitalSignature")
    # Leaf first: it is the shortest-lived certificate, so its expiry is the one worth naming.
    for link in reversed(path):
        _check_validity(link, at)
    return leaf_certificate
