"""The public listener's TLS identity: a key pair made in memory at start-up, never stored.

A fresh ECDSA P-256 key and self-signed certificate per runtime process; the SHA-256 of the
certificate's DER goes into the attestation ``user_data`` (docs/protocols.md), so a client that
verified a document pins it. The key reaches ``ssl`` through an in-memory file, never a
persistent one (docs/architecture.md, "The TLS identity").
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from enclave_core.errors import CryptoError

VALIDITY = timedelta(days=365)
#: Backdating ``notBefore`` tolerates clients whose clocks run a little behind.
CLOCK_SKEW = timedelta(minutes=5)
ORGANIZATION = "Simple Enclave"
SAN_DNS = ("localhost",)
SAN_IP = ("127.0.0.1",)
#: TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 suites are all fine).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True, repr=False)
class TlsIdentity:
    """The certificate the public listener serves and a server context holding its key.

    The private key lives only inside ``context`` (OpenSSL's memory); it is not an attribute.
    """

    certificate_der: bytes
    context: ssl.SSLContext

    @property
    def sha256(self) -> str:
        """Lower-case hex SHA-256 of the certificate's DER encoding (what user_data binds)."""
        return hashlib.sha256(self.certificate_der).hexdigest()

    def __repr__(self) -> str:
        return f"TlsIdentity(sha256={self.sha256[:16]}…)"


def make_certificate(
    key: ec.EllipticCurvePrivateKey, common_name: str, *, now: datetime | None = None
) -> x509.Certificate:
    """A self-signed server certificate for ``key``: CN ``common_name``, SAN localhost/127.0.0.1."""
    start = (now or datetime.now(UTC)) - CLOCK_SKEW
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    alt_names: list[x509.GeneralName] = [x509.DNSName(d) for d in SAN_DNS]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SAN_IP]
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def server_context() -> ssl.SSLContext:
    """An empty server context: TLS 1.2 minimum, forward-secret AEAD suites, HTTP/1.1 ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _load_from_memfd(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes, pw: bytes) -> None:
    fds: list[int] = []
    try:
        for label, data in (("enclave-tls-cert", cert_pem), ("enclave-tls-key", key_pem)):
            fd = os.memfd_create(label, os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, data)
        cert_path, key_path = (f"/proc/self/fd/{fd}" for fd in fds)
        context.load_cert_chain(cert_path, key_path, password=pw)
    finally:
        for fd in fds:
            os.close(fd)


def _load_from_private_dir(
    context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes, pw: bytes
) -> None:
    with tempfile.TemporaryDirectory(prefix="enclave-tls-") as folder:  # created 0700
        paths = [Path(folder) / "cert.pem", Path(folder) / "key.pem"]
        for path, data in zip(paths, (cert_pem, key_pem), strict=True):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as sink:
                sink.write(data)
        try:
            context.load_cert_chain(paths[0], paths[1], password=pw)
        finally:
            for path in paths:
                path.unlink(missing_ok=True)


def load_key_pair(
    context: ssl.SSLContext,
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
    *,
    use_memfd: bool | None = None,
) -> None:
    """Load ``key`` and ``certificate`` into ``context`` without leaving the key on disk.

    :param use_memfd: force the memfd path (True) or the temporary-directory path (False);
        default: memfd where the platform has it.
    """
    password = secrets.token_hex(32).encode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    if use_memfd is None:
        use_memfd = hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir()
    loader = _load_from_memfd if use_memfd else _load_from_private_dir
    try:
        loader(context, cert_pem, key_pem, password)
    except (OSError, ssl.SSLError) as exc:
        raise CryptoError(f"TLS: cannot load the listener's key pair: {exc}") from None


def make_tls_identity(common_name: str, *, use_memfd: bool | None = None) -> TlsIdentity:
    """Make a fresh P-256 key, its self-signed certificate and a server context serving them."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = make_certificate(key, common_name)
    context = server_context()
    load_key_pair(context, key, certificate, use_memfd=use_memfd)
    return TlsIdentity(
        certificate_der=certificate.public_bytes(serialization.Encoding.DER), context=context
    )
