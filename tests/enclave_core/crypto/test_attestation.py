"""Tests for enclave_core.crypto.attestation: the Nitro attestation document verifier.

Real hardware documents are the project's own copies under ``tests/data/nitro/``. Malformed
envelopes and payloads are signed with a dev-CA leaf, so each is rejected by the one check it
breaks, not by the signature.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.crypto import attestation, cose
from enclave_core.crypto.attestation import verify_document
from enclave_core.crypto.aws_root import aws_nitro_root, load_root_pem
from enclave_core.crypto.devca import DevCa, LeafBundle
from enclave_core.errors import AttestationError
from tests.vectors import NITRO as TESTDATA

DEV_ROOT = TESTDATA / "synthetic" / "dev-root.pem"
#: The real documents and their timestamps (SOURCES.md).
REAL = {
    "nitrite-2024-09-07.cbor": 1725719859545,
    "nitrite-debug-2024-09-07.cbor": 1725719886508,
    "evervault-2022-10-13.cbor": 1665651482136,
    "evervault-debug-2022-10-12.cbor": 1665582606081,
    "evervault-cert-2023-01-18.cbor": 1674047239280,
}
DEBUG = {"nitrite-debug-2024-09-07.cbor", "evervault-debug-2022-10-12.cbor"}
NITRITE_PCR0 = (
    "e72a46ca80a260fb044a125442f0c7e331813bcbaf9724d9"
    "f3857758992766f2d65710a27aa94ae3949dd54e7c9fe86a"
)
EVERVAULT_CERT_PCRS = {
    0: "d265a83faa7b4fa0d73b82b6d06253e894445922937d0ee5"
    "a74fe4891da9817611a71e71b98e5329232902de3cf419af",
    1: "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99a"
    "a19e6b29c37ee80b214a414b7607236edf26fcb78654e63f",
    2: "e4f634d24ad83b7f6e49fe283bafdb220f6252fb4a278a85"
    "8e19d15b7cd0f263b9168ed0bacefb4444266df9f9a77f24",
    8: "97c5395a83c0d6a04d53ff962663c714c178c24500bf97f7"
    "8456ed3721d922cf3f940614da4bb90107c439bc4a1443ca",
}
PROTECTED = cose.PROTECTED_ES384
MODULE_ID = "i-0123456789abcdef0-enc0123456789abcdef"


def real(name: str) -> bytes:
    return (TESTDATA / name).read_bytes()


def rejects(data: bytes, pattern: str, **kwargs: Any) -> str:
    with pytest.raises(AttestationError, match=pattern) as info:
        verify_document(data, **kwargs)
    return str(info.value)


# --- real documents -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL))
def test_every_real_document_verifies_at_its_own_timestamp(name: str) -> None:
    document = verify_document(real(name))
    stamp = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=REAL[name])
    assert (document.timestamp, document.verified_at, document.digest) == (stamp, stamp, "SHA384")
    assert re.fullmatch(r"i-[0-9a-f]{17}-enc[0-9a-f]{16}", document.module_id)
    assert sorted(document.pcrs) == list(range(16))
    assert document.cabundle[0] == aws_nitro_root().public_bytes(serialization.Encoding.DER)
    # PCR4 = SHA-384(0^48 || parent instance id): proves the PCR map was read, not just accepted.
    instance = document.module_id.split("-enc")[0].encode()
    assert document.pcrs[4] == hashlib.sha384(bytes(48) + instance).digest()
    assert document.debug_mode is (name in DEBUG)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_documents_fail_at_the_present_time(name: str) -> None:
    message = rejects(real(name), "expired", at=datetime.now(UTC))
    assert re.fullmatch(
        r"certificate chain: certificate 4 \(leaf, CN=i-[0-9a-f]{17}-enc[0-9a-f]{16}\..*\) "
        r"expired at \S+Z \(checked at \S+Z\)",
        message,
    )


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_documents_fail_under_a_dev_root(name: str, tmp_path: Path) -> None:
    for root in (load_root_pem(DEV_ROOT), DevCa(tmp_path).root_certificate()):
        message = rejects(real(name), "is not issued by", root=root)
        assert "certificate 1 (cabundle[0], CN=aws.nitro-enclaves" in message
        assert "(trusted root, CN=dev.nitro-enclaves" in message


def test_the_synthetic_dev_sample_verifies_only_under_its_dev_root() -> None:
    data = real("synthetic/dev-sample.cbor")
    document = verify_document(data, root=load_root_pem(DEV_ROOT))
    assert document.module_id == MODULE_ID
    assert [document.pcrs[i] for i in range(3)] == [b"\xaa" * 48, b"\xbb" * 48, b"\xcc" * 48]
    assert (document.user_data, document.nonce) == (b"dev-user-data", bytes(range(16)))
    assert document.debug_mode is False
    rejects(data, r"CN=dev\.nitro-enclaves.* is not issued by .*CN=aws\.nitro-enclaves")


def test_expected_pcrs_match_or_name_the_mismatch() -> None:
    nitrite = real("nitrite-2024-09-07.cbor")
    matched = verify_document(nitrite, expected_pcrs={0: bytes.fromhex(NITRITE_PCR0)})
    assert matched.pcrs[0].hex() == NITRITE_PCR0
    wrong = bytes(48)
    assert rejects(nitrite, "PCR0 mismatch", expected_pcrs={0: wrong}) == (
        f"PCR0 mismatch: expected {wrong.hex()}, got {NITRITE_PCR0}"
    )
    expected = {i: bytes.fromhex(h) for i, h in EVERVAULT_CERT_PCRS.items()}
    cert_doc = real("evervault-cert-2023-01-18.cbor")
    assert verify_document(cert_doc, expected_pcrs=expected).pcrs[8] == expected[8]
    rejects(cert_doc, "^PCR8 mismatch", expected_pcrs={**expected, 8: expected[1]})
    rejects(cert_doc, "the document has no PCR20", expected_pcrs={20: wrong})


def test_an_unexpected_exception_still_ends_as_attestation_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("x" * 500)

    monkeypatch.setattr(attestation, "verify_chain", broken)
    message = rejects(real("nitrite-2024-09-07.cbor"), r"unexpected failure \(RuntimeError: x+\)")
    assert len(message) < 300


def test_optional_fields_are_returned_as_the_document_has_them() -> None:
    nitrite = verify_document(real("nitrite-2024-09-07.cbor"))
    assert nitrite.public_key == nitrite.user_data == nitrite.nonce == b"\x01" * 1024
    debug = verify_document(real("evervault-debug-2022-10-12.cbor"))
    assert (debug.public_key, debug.user_data, debug.nonce) == (
        b"my super secret key",
        b"hello, world!",
        None,
    )


def test_expected_nonce_is_enforced() -> None:
    data = real("evervault-2022-10-13.cbor")
    nonce = verify_document(data).nonce
    assert nonce is not None and len(nonce) == 256
    assert verify_document(data, expected_nonce=nonce).nonce == nonce
    rejects(data, "nonce mismatch: the document's 256-byte nonce", expected_nonce=bytes(256))
    rejects(
        real("evervault-debug-2022-10-12.cbor"),
        "nonce mismatch: expected a 3-byte nonce, the document has none",
        expected_nonce=b"abc",
    )


# --- documents of the simulated NSM ---------------------------------------------------------


def simulated_document(base: Path) -> tuple[bytes, x509.Certificate]:
    """A document from a simulated NSM with its state in ``base``, and its dev root."""
    (base / "app").mkdir()
    (base / "app" / "app.py").write_text("print('hello')\n")
    nsm = SimulatedNsm(state_dir=base / "state", app_dir=base / "app")
    data = nsm.attestation(user_data=b"user", nonce=b"n" * 20, public_key=None)
    return data, load_root_pem(base / "state" / "dev-root.pem")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, x509.Certificate]:
    """A document from the simulated NSM and its dev root."""
    return simulated_document(tmp_path_factory.mktemp("simulated"))


def test_a_simulated_nsm_document_verifies_with_its_dev_root_only(
    simulated: tuple[bytes, x509.Certificate],
) -> None:
    data, root = simulated
    document = verify_document(data, root=root, at=datetime.now(UTC), expected_nonce=b"n" * 20)
    assert (document.user_data, document.public_key) == (b"user", None)
    assert sorted(document.pcrs) == list(range(16)) and not document.debug_mode
    rejects(data, r"is not issued by certificate 0 \(trusted root, CN=aws\.nitro-enclaves")


# --- envelope and payload rules, with documents a dev leaf signs ----------------------------


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> tuple[LeafBundle, x509.Certificate]:
    ca = DevCa(tmp_path_factory.mktemp("devca"))
    return ca.issue_leaf(MODULE_ID), ca.root_certificate()


def fields(leaf: LeafBundle, **changes: Any) -> dict[str, Any]:
    """The payload map, in Nitro order, for ``leaf``; a change to ``...`` deletes the key."""
    payload: dict[str, Any] = {
        "module_id": MODULE_ID,
        "digest": "SHA384",
        "timestamp": int(datetime.now(UTC).timestamp() * 1000),
        "pcrs": {i: bytes([i]) * 48 for i in range(16)},
        "certificate": leaf.certificate,
        "cabundle": leaf.cabundle,
        "public_key": None,
        "user_data": None,
        "nonce": None,
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


def seal(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    protected: bytes = PROTECTED,
    unprotected: dict[Any, Any] | None = None,
    tag: int | None = None,
    signature_size: int = 96,
) -> bytes:
    """Sign ``payload`` as COSE_Sign1 with ``key``, with some framing of our choice."""
    der = key.sign(cose.sig_structure(protected, payload), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    signature = (r.to_bytes(48, "big") + s.to_bytes(48, "big") + bytes(2))[:signature_size]
    item: Any = [protected, unprotected or {}, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(tag, item) if tag is not None else item)


def test_tagged_and_untagged_envelopes_verify(dev: tuple[LeafBundle, x509.Certificate]) -> None:
    leaf, root = dev
    payload = cbor2.dumps(fields(leaf))
    for tag in (None, 18):
        assert verify_document(seal(payload, leaf.private_key, tag=tag), root=root).pcrs[3] == (
            b"\x03" * 48
        )


@pytest.mark.parametrize(
    ("framing", "pattern"),
    [
        ({"tag": 98}, "CBOR tag 98 not allowed"),
        ({"protected": cbor2.dumps({1: -7})}, "protected header does not name alg ES384"),
        ({"protected": cbor2.dumps({1: -35, 4: b"k"})}, r"must be exactly \{1: -35\}"),
        ({"unprotected": {1: -35}}, "alg must not appear in the unprotected header"),
        ({"signature_size": 95}, "not a 96-byte byte string"),
        ({"signature_size": 97}, "not a 96-byte byte string"),
    ],
)
def test_envelope_rules(
    dev: tuple[LeafBundle, x509.Certificate], framing: dict[str, Any], pattern: str
) -> None:
    leaf, root = dev
    rejects(seal(cbor2.dumps(fields(leaf)), leaf.private_key, **framing), pattern, root=root)


def test_trailing_bytes_and_a_foreign_signer_are_rejected(
    dev: tuple[LeafBundle, x509.Certificate],
) -> None:
    leaf, root = dev
    good = seal(cbor2.dumps(fields(leaf)), leaf.private_key)
    rejects(good + b"\x00", "1 trailing byte", root=root)
    rejects(good + good, "trailing byte", root=root)
    other = ec.generate_private_key(ec.SECP384R1())
    rejects(seal(cbor2.dumps(fields(leaf)), other), "signature is invalid", root=root)
    rejects("text", "expected bytes, got str", root=root)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"extra": b"x"}, r"unknown key\(s\) \['extra'\]"),
        ({"pcrs": ...}, r"missing mandatory field\(s\) \['pcrs'\]"),
        ({"certificate": None}, r"missing mandatory field\(s\) \['certificate'\]"),
        ({"module_id": ""}, "module_id must be a non-empty text string"),
        ({"digest": "SHA256", "pcrs": {0: bytes(32)}}, "digest must be 'SHA384', got 'SHA256'"),
        ({"pcrs": {0: bytes(47)}}, "PCR0 must be 48 bytes"),
        ({"pcrs": {32: bytes(48)}}, "invalid PCR index 32"),
        ({"pcrs": {}}, "pcrs must be a map of 1..32 entries"),
        ({"timestamp": 0}, "timestamp must be a positive uint64"),
        ({"timestamp": 2**64 - 1}, "timestamp 18446744073709551615 is out of range"),
        ({"timestamp": 2**64}, "CBOR tag 2 not allowed"),  # cbor2 writes a bignum
        ({"timestamp": 1.5e12}, "float 0xfb not allowed"),
        ({"cabundle": []}, "cabundle must be a non-empty array"),
        ({"nonce": bytes(1025)}, "nonce must be 0..1024 bytes"),
        ({"user_data": "text"}, "user_data must be 0..1024 bytes"),
        ({"pcrs": cbor2.CBORTag(258, [1])}, "CBOR tag 258 not allowed"),
    ],
)
def test_payload_rules(
    dev: tuple[LeafBundle, x509.Certificate], changes: dict[str, Any], pattern: str
) -> None:
    leaf, root = dev
    rejects(seal(cbor2.dumps(fields(leaf, **changes)), leaf.private_key), pattern, root=root)


def test_raw_cbor_oddities_in_the_payload_are_rejected(
    dev: tuple[LeafBundle, x509.Certificate],
) -> None:
    leaf, root = dev
    payload = cbor2.dumps(fields(leaf))
    assert payload[0] == 0xA9  # a map of 9 entries
    indefinite = b"\xbf" + payload[1:] + b"\xff"
    rejects(seal(indefinite, leaf.private_key), "indefinite-length", root=root)
    # A tenth entry repeating "nonce": a duplicate key, which cbor2 would otherwise let win.
    duplicate = b"\xaa" + payload[1:] + cbor2.dumps("nonce") + cbor2.dumps(b"x")
    rejects(seal(duplicate, leaf.private_key), "invalid CBOR", root=root)
