"""Mutation tests for enclave_core.crypto.attestation: no changed document may verify.

A strict parser leaves no byte that can change without changing what is verified, so every
single-byte change to a real or simulated document must fail, and so must every truncation,
insertion and deletion. Random bytes must end in AttestationError and nothing else.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_core.crypto import cose
from enclave_core.crypto.attestation import verify_document
from enclave_core.errors import AttestationError
from tests.enclave_core.crypto.test_attestation import REAL, real, simulated_document

POSITION = st.integers(0, 2**20)
Corpus = dict[str, tuple[bytes, x509.Certificate | None, dict[str, tuple[int, int]]]]


def spans(data: bytes) -> dict[str, tuple[int, int]]:
    """Where the payload, the signature and each certificate sit inside ``data``."""
    envelope = cose.decode_sign1(data)
    document = cose.decode_document(envelope.payload)
    start = data.index(envelope.payload)
    found = {
        "payload": (start, start + len(envelope.payload)),
        "signature": (len(data) - 96, len(data)),
    }
    for i, der in enumerate([document["certificate"], *document["cabundle"]]):
        at = data.index(der)
        found[f"certificate {i}"] = (at, at + len(der))
    return found


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Every real document and a simulated one, with their trust anchors and regions."""
    documents: dict[str, tuple[bytes, x509.Certificate | None]] = {n: (real(n), None) for n in REAL}
    documents["simulated"] = simulated_document(tmp_path_factory.mktemp("simulated"))
    return {name: (data, root, spans(data)) for name, (data, root) in documents.items()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(choice=st.data())
def test_no_single_byte_change_to_payload_signature_or_certificate_verifies(
    corpus: Corpus,
    choice: st.DataObject,
) -> None:
    name = choice.draw(st.sampled_from(sorted(corpus)), label="document")
    data, root, regions = corpus[name]
    region = choice.draw(st.sampled_from(sorted(regions)), label="region")
    start, end = regions[region]
    # Positions are drawn in a fixed range, not from the document's length: the simulated
    # document's length varies between runs, and hypothesis replays stored examples.
    offset = start + choice.draw(POSITION, label="position") % (end - start)
    mutated = bytearray(data)
    mutated[offset] ^= choice.draw(st.integers(1, 255), label="xor")
    with pytest.raises(AttestationError) as info:
        verify_document(bytes(mutated), root=root)
    # The payload, certificates included, is signed; the chain must still catch a changed
    # certificate on its own, and a changed signature leaves nothing else to fail.
    if region.startswith("certificate"):
        assert str(info.value).startswith("certificate chain: ")
    elif region == "signature":
        assert str(info.value) == "COSE verify: the attestation document signature is invalid"


def test_every_change_to_a_framing_byte_is_rejected(
    corpus: Corpus,
) -> None:
    # The bytes outside the payload and the signature: array head, protected header, unprotected
    # map, the two byte-string heads. Every value of every one of them must fail.
    data, root, regions = corpus["nitrite-2024-09-07.cbor"]
    payload_start, payload_end = regions["payload"]
    framing = [*range(payload_start), *range(payload_end, len(data) - 96)]
    assert len(framing) == 12
    for offset in framing:
        for value in range(256):
            if value != data[offset]:
                mutated = data[:offset] + bytes([value]) + data[offset + 1 :]
                with pytest.raises(AttestationError):
                    verify_document(mutated, root=root)


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=600), head=st.sampled_from([b"", b"\x84", b"\xd2\x84", b"\x84\x44"]))
def test_random_bytes_raise_only_attestation_error(junk: bytes, head: bytes) -> None:
    with pytest.raises(AttestationError):
        verify_document(head + junk)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(choice=st.data())
def test_truncated_extended_or_spliced_documents_are_rejected(
    corpus: Corpus,
    choice: st.DataObject,
) -> None:
    data, root, _ = corpus[choice.draw(st.sampled_from(sorted(corpus)), label="document")]
    cut = choice.draw(POSITION, label="position") % len(data)
    insert = choice.draw(st.binary(max_size=8), label="insert")
    drop = choice.draw(st.integers(0 if insert else 1, 8), label="drop")
    mutated = data[:cut] + insert + data[cut + drop :]
    if mutated != data:
        with pytest.raises(AttestationError):
            verify_document(mutated, root=root)
