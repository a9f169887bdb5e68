"""Tests for enclave_core.crypto.x509path: X.509 path validation, one broken rule at a time.

Chains are built with cryptography in the Nitro shape (root -> regional -> zonal -> instance ->
leaf, EC P-384, ecdsa-with-SHA384, pathlen 2/1/0); each test changes one certificate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from enclave_core.crypto.x509path import verify_chain
from enclave_core.errors import AttestationError

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
P384 = ec.SECP384R1()


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def usage(*, sign: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Spec:
    """How to build one certificate; the defaults make a valid Nitro-like CA."""

    cn: str
    ca: bool | None = True  # None: no BasicConstraints at all
    pathlen: int | None = None
    key_usage: x509.KeyUsage | None = field(
        default_factory=lambda: usage(sign=True, cert_sign=True)
    )
    key: Any = None  # the subject's private key (default: a fresh P-384 key)
    not_before: datetime = NOW - timedelta(days=1)
    not_after: datetime = NOW + timedelta(days=1)
    hash: hashes.SHA256 | hashes.SHA384 = field(default_factory=hashes.SHA384)
    issuer_name: x509.Name | None = None  # override the issuer name written in the certificate
    signing_key: Any = None  # override the key that signs the certificate
    extra: list[tuple[x509.ExtensionType, bool]] = field(default_factory=list)
    serial: int | None = None  # default: random


@dataclass
class Built:
    certificate: x509.Certificate
    key: Any

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def build(spec: Spec, issuer: Built | None) -> Built:
    key = spec.key or ec.generate_private_key(P384)
    subject = name(spec.cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(spec.issuer_name or (issuer.certificate.subject if issuer else subject))
        .public_key(key.public_key())
        .serial_number(spec.serial or x509.random_serial_number())
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
    )
    if spec.ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(spec.ca, spec.pathlen), True)
    if spec.key_usage is not None:
        builder = builder.add_extension(spec.key_usage, True)
    for extension, critical in spec.extra:
        builder = builder.add_extension(extension, critical)
    signer = spec.signing_key or (issuer.key if issuer else key)
    return Built(builder.sign(signer, spec.hash), key)


def default_specs() -> dict[str, Spec]:
    return {
        "root": Spec("root", not_after=NOW + timedelta(days=3650)),
        "regional": Spec("regional", pathlen=2),
        "zonal": Spec("zonal", pathlen=1),
        "instance": Spec("instance", pathlen=0, key_usage=usage(cert_sign=True)),
        "leaf": Spec("leaf", ca=False, key_usage=usage(sign=True)),
    }


def make_chain(**changes: Spec) -> list[Built]:
    """Build [root, regional, zonal, instance, leaf], some specs replaced."""
    specs = {**default_specs(), **changes}
    chain: list[Built] = []
    for level in ("root", "regional", "zonal", "instance", "leaf"):
        chain.append(build(specs[level], chain[-1] if chain else None))
    return chain


def check(chain: list[Built], at: datetime = NOW, *, bundle: list[bytes] | None = None) -> Any:
    root, leaf = chain[0], chain[-1]
    cabundle = bundle if bundle is not None else [c.der for c in chain[:-1]]
    return verify_chain(leaf.der, cabundle, root.certificate, at)


def rejected(chain: list[Built], at: datetime = NOW, **kwargs: Any) -> str:
    with pytest.raises(AttestationError) as info:
        check(chain, at, **kwargs)
    message = str(info.value)
    assert message.startswith("certificate chain: ")
    return message


def test_a_nitro_shaped_chain_verifies_and_returns_the_leaf() -> None:
    chain = make_chain()
    assert check(chain) == chain[-1].certificate


def test_a_cabundle_without_the_root_is_all_intermediates() -> None:
    chain = make_chain()
    bundle = [c.der for c in chain[1:-1]]
    assert check(chain, bundle=bundle) == chain[-1].certificate


def test_a_foreign_root_first_in_the_cabundle_is_not_issued_by_the_trusted_root() -> None:
    chain = make_chain()
    other = build(Spec("other-root"), None)
    bundle = [other.der] + [c.der for c in chain[1:-1]]
    assert rejected(chain, bundle=bundle) == (
        "certificate chain: certificate 1 (cabundle[0], CN=other-root) is not issued by "
        "certificate 0 (trusted root, CN=root): its issuer name is CN=other-root"
    )
    # Same name, other key: the name matches, the signature cannot.
    impostor = build(Spec("root"), None)
    bundle[0] = impostor.der
    assert "the signature of certificate 1 (cabundle[0], CN=root) does not verify" in rejected(
        chain, bundle=bundle
    )


def test_the_bounds_of_validity_are_inclusive() -> None:
    chain = make_chain()
    leaf = chain[-1].certificate
    assert check(chain, leaf.not_valid_before_utc) == leaf
    assert check(chain, leaf.not_valid_after_utc) == leaf


def test_an_expired_leaf_names_its_expiry_and_the_checked_time() -> None:
    chain = make_chain()
    later = NOW + timedelta(days=1, seconds=1)
    assert rejected(chain, later) == (
        "certificate chain: certificate 4 (leaf, CN=leaf) expired at "
        "2025-03-02T12:00:00.000Z (checked at 2025-03-02T12:00:01.000Z)"
    )


def test_a_not_yet_valid_intermediate_is_rejected() -> None:
    chain = make_chain(zonal=Spec("zonal", pathlen=1, not_before=NOW + timedelta(hours=1)))
    message = rejected(chain)
    assert "certificate 2 (cabundle[2], CN=zonal) is not valid before 2025-03-01T13:00:00.000Z" in (
        message
    )


def test_an_expired_root_is_rejected_too() -> None:
    chain = make_chain(root=Spec("root", not_after=NOW - timedelta(seconds=1)))
    assert "certificate 0 (trusted root, CN=root) expired at" in rejected(chain)


def test_a_ca_without_key_cert_sign_is_rejected() -> None:
    chain = make_chain(zonal=Spec("zonal", pathlen=1, key_usage=usage(sign=True)))
    assert rejected(chain) == (
        "certificate chain: certificate 2 (cabundle[2], CN=zonal) lacks KeyUsage keyCertSign"
    )


def test_a_ca_without_key_usage_is_rejected() -> None:
    chain = make_chain(instance=Spec("instance", pathlen=0, key_usage=None))
    assert "certificate 3 (cabundle[3], CN=instance) lacks KeyUsage keyCertSign" in rejected(chain)


def test_an_issuer_that_is_not_a_ca_is_rejected() -> None:
    chain = make_chain(regional=Spec("regional", ca=False))
    assert "certificate 1 (cabundle[1], CN=regional) is not a CA" in rejected(chain)
    chain = make_chain(regional=Spec("regional", ca=None))
    assert "certificate 1 (cabundle[1], CN=regional) is not a CA" in rejected(chain)


def test_an_exceeded_path_length_is_rejected() -> None:
    chain = make_chain(regional=Spec("regional", pathlen=1))
    assert rejected(chain) == (
        "certificate chain: certificate 1 (cabundle[1], CN=regional) has pathLenConstraint 1 "
        "but 2 intermediate certificate(s) follow it"
    )
    chain = make_chain(root=Spec("root", pathlen=2, not_after=NOW + timedelta(days=9)))
    assert "certificate 0 (trusted root, CN=root) has pathLenConstraint 2 but 3" in rejected(chain)


def test_a_leaf_that_is_a_ca_is_rejected() -> None:
    chain = make_chain(leaf=Spec("leaf", ca=True, key_usage=usage(sign=True)))
    assert "certificate 4 (leaf, CN=leaf) is a CA" in rejected(chain)


def test_a_leaf_without_digital_signature_is_rejected() -> None:
    chain = make_chain(leaf=Spec("leaf", ca=False, key_usage=usage(cert_sign=True)))
    assert "certificate 4 (leaf, CN=leaf) lacks KeyUsage digitalSignature" in rejected(chain)
    chain = make_chain(leaf=Spec("leaf", ca=False, key_usage=None))
    assert "lacks KeyUsage digitalSignature" in rejected(chain)


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSAPublicKey"),
        (ec.generate_private_key(ec.SECP256R1()), "secp256r1"),
    ],
)
@pytest.mark.parametrize("level", ["zonal", "leaf"])
def test_a_certificate_whose_key_is_not_p384_is_rejected(key: Any, kind: str, level: str) -> None:
    spec = default_specs()[level]
    spec.key = key
    index = {"zonal": 2, "leaf": 4}[level]
    message = rejected(make_chain(**{level: spec}))
    assert f"certificate {index} (" in message
    assert f"has a {kind} public key, expected EC P-384" in message


def test_a_certificate_signed_with_sha256_is_rejected() -> None:
    chain = make_chain(instance=Spec("instance", pathlen=0, hash=hashes.SHA256()))
    assert rejected(chain) == (
        "certificate chain: certificate 3 (cabundle[3], CN=instance) is signed with "
        "1.2.840.10045.4.3.2, expected ecdsa-with-SHA384"
    )


def test_a_trust_anchor_with_a_p256_key_is_rejected() -> None:
    chain = make_chain(root=Spec("root", key=ec.generate_private_key(ec.SECP256R1())))
    assert "certificate 0 (trusted root, CN=root) has a secp256r1 public key" in rejected(chain)


def test_an_unknown_critical_extension_is_rejected() -> None:
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    chain = make_chain(
        leaf=Spec("leaf", ca=False, key_usage=usage(sign=True), extra=[(unknown, True)])
    )
    assert rejected(chain) == (
        "certificate chain: certificate 4 (leaf, CN=leaf) has an unknown critical extension "
        "1.3.6.1.4.1.99999.1"
    )


def test_an_unknown_non_critical_extension_is_ignored() -> None:
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    chain = make_chain(
        leaf=Spec("leaf", ca=False, key_usage=usage(sign=True), extra=[(unknown, False)])
    )
    assert check(chain) == chain[-1].certificate


def test_a_wrong_issuer_name_is_rejected_even_with_a_good_signature() -> None:
    chain = make_chain(zonal=Spec("zonal", pathlen=1, issuer_name=name("somebody-else")))
    assert rejected(chain) == (
        "certificate chain: certificate 2 (cabundle[2], CN=zonal) is not issued by certificate 1 "
        "(cabundle[1], CN=regional): its issuer name is CN=somebody-else"
    )


def test_a_signature_by_another_key_is_rejected() -> None:
    chain = make_chain(zonal=Spec("zonal", pathlen=1, signing_key=ec.generate_private_key(P384)))
    assert rejected(chain) == (
        "certificate chain: the signature of certificate 2 (cabundle[2], CN=zonal) does not "
        "verify with the key of certificate 1 (cabundle[1], CN=regional)"
    )


def test_different_signature_algorithms_inside_and_outside_the_tbs_are_rejected() -> None:
    chain = make_chain()
    der = chain[-1].der
    sha384 = bytes.fromhex("300a06082a8648ce3d040303")  # AlgorithmIdentifier ecdsa-with-SHA384
    inner = der.index(sha384)  # the first one is the TBS's; the outer one stays SHA-384
    patched = der[:inner] + sha384[:-1] + b"\x02" + der[inner + len(sha384) :]
    cabundle = [c.der for c in chain[:-1]]
    with pytest.raises(AttestationError, match="different signature algorithms inside and outside"):
        verify_chain(patched, cabundle, chain[0].certificate, NOW)


def test_malformed_der_is_rejected_with_its_position() -> None:
    chain = make_chain()
    bundle = [c.der for c in chain[:-1]]
    bundle[2] = bundle[2][:-1]
    assert "cabundle[2] is not a valid DER certificate" in rejected(chain, bundle=bundle)
    good = [c.der for c in chain[:-1]]
    with pytest.raises(AttestationError, match="the document's certificate is not a valid DER"):
        verify_chain(b"\x30\x00", good, chain[0].certificate, NOW)


def test_an_empty_cabundle_and_a_naive_time_are_rejected() -> None:
    chain = make_chain()
    assert rejected(chain, bundle=[]) == "certificate chain: the cabundle is empty"
    assert "timezone-aware" in rejected(chain, NOW.replace(tzinfo=None))


def test_a_leaf_issued_directly_by_the_root_is_accepted() -> None:
    root = build(default_specs()["root"], None)
    leaf = build(default_specs()["leaf"], root)
    assert verify_chain(leaf.der, [root.der], root.certificate, NOW) == leaf.certificate


def test_a_signature_bit_string_with_unused_bits_is_rejected() -> None:
    # cryptography ignores this unsigned byte when the bits it drops are zero, so without the
    # check a changed certificate would pass. Re-sign until the last signature bit is zero.
    chain = make_chain()
    leaf_spec = Spec("leaf", ca=False, key_usage=usage(sign=True))
    der = chain[-1].der
    while der[-1] & 1:
        der = build(leaf_spec, chain[-2]).der
    sha384 = bytes.fromhex("300a06082a8648ce3d040303")
    bit_string = der.rindex(sha384) + len(sha384)  # outer signatureValue: 03 <len> 00 30 ...
    assert der[bit_string] == 0x03 and der[bit_string + 2] == 0x00
    patched = der[: bit_string + 2] + b"\x01" + der[bit_string + 3 :]
    cabundle = [c.der for c in chain[:-1]]
    with pytest.raises(
        AttestationError, match=r"\(leaf, CN=leaf\) has a signature BIT STRING with"
    ):
        verify_chain(patched, cabundle, chain[0].certificate, NOW)


def test_a_certificate_with_a_negative_serial_is_rejected_without_a_warning() -> None:
    chain = make_chain()
    leaf = build(Spec("leaf", ca=False, key_usage=usage(sign=True), serial=0x1122334455), chain[-2])
    at = leaf.der.index(bytes.fromhex("02051122334455"))
    patched = bytearray(leaf.der)
    # Set the serial's sign bit. Under filterwarnings=error a cryptography warning would fail.
    patched[at + 2] |= 0x80
    cabundle = [c.der for c in chain[:-1]]
    with pytest.raises(AttestationError, match="document's certificate has a serial number that"):
        verify_chain(bytes(patched), cabundle, chain[0].certificate, NOW)
