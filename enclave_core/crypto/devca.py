"""The development certificate authority that signs the simulated NSM's attestation documents.

It mirrors the AWS chain (root, regional, zonal, instance, leaf; EC P-384), keeps its CA levels in
``state_dir/dev-ca/`` and reuses them while they are valid, and writes the root to
``state_dir/dev-root.pem``, the trust anchor a verifier or the local KMS uses instead of the AWS
root. Details: docs/architecture.md, "Attestation documents and the simulated NSM".
"""

from __future__ import annotations

import fcntl
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_core.errors import AttestationError

ROOT_CN = "dev.nitro-enclaves"
LIFETIMES = {
    "root": timedelta(days=365 * 30 + 7),
    "regional": timedelta(days=20),
    "zonal": timedelta(days=6),
    "instance": timedelta(days=1),
    "leaf": timedelta(hours=3),
}
CA_LEVELS = ("root", "regional", "zonal", "instance")
#: Slack kept between a parent's expiry and its child's, and the leaf's re-issue threshold.
MARGIN = timedelta(minutes=10)
# Backdating tolerates small clock differences between processes on one machine.
_BACKDATE_CA = timedelta(minutes=1)
_BACKDATE_LEAF = timedelta(seconds=3)


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        """The certificate in DER."""
        return self.certificate.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class LeafBundle:
    """What the NSM signs with: the leaf key and certificate, and the root-first cabundle."""

    private_key: ec.EllipticCurvePrivateKey
    certificate: bytes
    cabundle: list[bytes]
    not_after: datetime

    def expires_within(self, window: timedelta, now: datetime | None = None) -> bool:
        """Whether the leaf expires within ``window`` of ``now``."""
        return self.not_after - (now or datetime.now(UTC)) < window


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Local Development"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "DEV"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(
    *,
    digital_signature: bool,
    cert_sign: bool,
    crl_sign: bool,
    non_repudiation: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=non_repudiation,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DevCa:
    """The dev CA of one state directory; see the module docstring for the layout."""

    def __init__(self, state_dir: Path, *, region: str = "us-east-1") -> None:
        self.state_dir = Path(state_dir)
        self.directory = self.state_dir / "dev-ca"
        self.root_pem_path = self.state_dir / "dev-root.pem"
        self.region = region

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        with open(self.directory / ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def instance_id(self) -> str:
        """Return this state directory's simulated parent-instance id (``i-`` + 17 hex)."""
        path = self.directory / "instance-id"
        with self._locked():
            if path.exists():
                return path.read_text(encoding="ascii").strip()
            value = "i-" + secrets.token_hex(9)[:17]
            _write_atomic(path, value.encode("ascii") + b"\n", 0o600)
            return value

    def _stem(self, level: str, instance_id: str) -> str:
        return f"instance-{instance_id}" if level == "instance" else level

    def _subject(self, level: str, instance_id: str) -> x509.Name:
        region = self.region
        names = {
            "root": ROOT_CN,
            "regional": f"{secrets.token_hex(8)}.{region}.{ROOT_CN}",
            "zonal": f"{secrets.token_hex(8)}.zonal.{region}.{ROOT_CN}",
            "instance": f"{instance_id}.{region}.{ROOT_CN}",
        }
        return _name(names[level])

    def _load(self, level: str, instance_id: str) -> Credential | None:
        stem = self._stem(level, instance_id)
        cert_path, key_path = (
            self.directory / f"{stem}.pem",
            self.directory / f"{stem}.key",
        )
        if not cert_path.exists() or not key_path.exists():
            return None
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            if level == "root":
                # Never silently replace the trust anchor users may have pinned.
                raise AttestationError(
                    f"dev CA root in {self.directory} is unreadable ({exc}); "
                    "remove that folder to create a new dev CA"
                ) from None
            return None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            return None
        return Credential(cert, key)

    def _usable(
        self, cred: Credential, level: str, parent: Credential | None, now: datetime
    ) -> bool:
        cert = cred.certificate
        child = CA_LEVELS[CA_LEVELS.index(level) + 1] if level != "instance" else "leaf"
        if cert.not_valid_after_utc - now < LIFETIMES[child] + MARGIN:
            return False
        if cert.not_valid_before_utc > now:
            return False
        if parent is not None:
            try:
                cert.verify_directly_issued_by(parent.certificate)
            except (ValueError, TypeError, InvalidSignature):
                return False
        return True

    def _issue(
        self, level: str, instance_id: str, parent: Credential | None, now: datetime
    ) -> Credential:
        key = ec.generate_private_key(ec.SECP384R1())
        subject = self._subject(level, instance_id)
        issuer_key = parent.private_key if parent else key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(parent.certificate.subject if parent else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE_CA)
            .not_valid_after(now + LIFETIMES[level])
        )
        pathlen = {"root": None, "regional": 2, "zonal": 1, "instance": 0}[level]
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), True)
        if parent is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.private_key.public_key()),
                False,
            )
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
        is_instance = level == "instance"
        builder = builder.add_extension(
            _key_usage(
                digital_signature=not is_instance,
                cert_sign=True,
                crl_sign=not is_instance,
            ),
            True,
        )
        cert = builder.sign(issuer_key, hashes.SHA384())
        stem = self._stem(level, instance_id)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_atomic(self.directory / f"{stem}.key", key_pem, 0o600)
        _write_atomic(
            self.directory / f"{stem}.pem",
            cert.public_bytes(serialization.Encoding.PEM),
            0o644,
        )
        return Credential(cert, key)

    def ensure_chain(self, instance_id: str, now: datetime | None = None) -> list[Credential]:
        """Return the CA chain ``[root, regional, zonal, instance]``, creating what is missing.

        A level that is missing, broken, not issued by its parent or about to expire is re-issued,
        and so is every level below it.
        """
        now = now or datetime.now(UTC)
        chain: list[Credential] = []
        with self._locked():
            reissue = False
            for level in CA_LEVELS:
                parent = chain[-1] if chain else None
                cred = None if reissue else self._load(level, instance_id)
                if cred is None or not self._usable(cred, level, parent, now):
                    cred = self._issue(level, instance_id, parent, now)
                    reissue = True
                chain.append(cred)
            root_pem = chain[0].certificate.public_bytes(serialization.Encoding.PEM)
            if not self.root_pem_path.exists() or self.root_pem_path.read_bytes() != root_pem:
                _write_atomic(self.root_pem_path, root_pem, 0o644)
        return chain

    def root_certificate(self) -> x509.Certificate:
        """Return the root certificate, creating the CA if needed."""
        return self.ensure_chain(self.instance_id())[0].certificate

    def issue_leaf(self, module_id: str, now: datetime | None = None) -> LeafBundle:
        """Issue a 3-hour leaf for ``module_id`` (``i-...-enc...``) under a valid chain."""
        if "-enc" not in module_id:
            raise AttestationError(f"dev CA: module id {module_id!r} has no '-enc' part")
        now = now or datetime.now(UTC)
        chain = self.ensure_chain(module_id.split("-enc", 1)[0], now)
        instance = chain[-1]
        key = ec.generate_private_key(ec.SECP384R1())
        not_after = now + LIFETIMES["leaf"]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{module_id}.{self.region}.dev"))
            .issuer_name(instance.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE_LEAF)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                _key_usage(
                    digital_signature=True,
                    cert_sign=False,
                    crl_sign=False,
                    non_repudiation=True,
                ),
                False,
            )
            .sign(instance.private_key, hashes.SHA384())
        )
        return LeafBundle(
            private_key=key,
            certificate=cert.public_bytes(serialization.Encoding.DER),
            cabundle=[c.der for c in chain],
            not_after=not_after,
        )
