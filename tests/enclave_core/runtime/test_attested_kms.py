"""RecipientSession: the runtime's side of KMS Recipient, against the real local KMS and NSM."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from enclave_plugins.local_kms import LocalKms
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.crypto.attestation import verify_document
from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.crypto.cms import build_ciphertext_for_recipient
from enclave_core.errors import AccessDenied, CryptoError
from enclave_core.kmspolicy.canonical import locked_policy
from enclave_core.plugin.interfaces import Kms, KmsResult, Recipient
from enclave_core.runtime.attested_kms import DOCUMENT_LIFETIME, RecipientSession

CONTEXT = {"app": "hello", "purpose": "storage-dek"}


class CountingNsm:
    """The simulated NSM, counting the documents it signs."""

    def __init__(self, inner: SimulatedNsm) -> None:
        self.inner = inner
        self.requests: list[dict[str, Any]] = []

    def attestation(self, **fields: Any) -> bytes:
        self.requests.append(fields)
        return self.inner.attestation(**fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Tampering:
    """A KMS that changes the answers of a real one (what a hostile host could send back)."""

    def __init__(self, inner: LocalKms, change: Any) -> None:
        self.inner = inner
        self.change = change

    def decrypt(self, *args: Any, **kwargs: Any) -> KmsResult:
        return cast(KmsResult, self.change(self.inner.decrypt(*args, **kwargs)))

    def generate_data_key(self, *args: Any, **kwargs: Any) -> KmsResult:
        return cast(KmsResult, self.change(self.inner.generate_data_key(*args, **kwargs)))


@pytest.fixture
def counting_nsm(nsm: SimulatedNsm) -> CountingNsm:
    """The shared simulated ``nsm``, counting the documents it makes."""
    return CountingNsm(nsm)


@pytest.fixture
def key_id(kms: LocalKms, counting_nsm: CountingNsm) -> str:
    info = kms.create_key()
    pcr0 = counting_nsm.describe_pcr(0).data.hex()
    policy = locked_policy(pcr0_hex=pcr0, principal_arn=kms.caller_arn())
    kms.put_key_policy(info.key_id, policy, bypass_lockout_safety_check=True)
    return info.key_id


def session_for(nsm: CountingNsm, **kwargs: Any) -> RecipientSession:
    return RecipientSession(cast(Any, nsm), **kwargs)


def test_each_session_has_its_own_rsa_2048_key(counting_nsm: CountingNsm) -> None:
    first, second = session_for(counting_nsm), session_for(counting_nsm)
    key = serialization.load_der_public_key(first.public_key_der)
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    assert first.public_key_der != second.public_key_der
    assert counting_nsm.requests == []  # no document until KMS is called
    assert "PRIVATE" not in repr(first) and repr(first) == "RecipientSession(RSA-2048)"


def test_the_document_carries_the_key_and_user_data(
    counting_nsm: CountingNsm, state_dir: Path
) -> None:
    session = session_for(counting_nsm, user_data=lambda: b"\x12\x20" + bytes(66))
    recipient = session.recipient()
    assert recipient.key_encryption_algorithm == "RSAES_OAEP_SHA_256"
    root = load_root_pem(state_dir / "dev-root.pem")
    document = verify_document(recipient.attestation_document, root=root, at=datetime.now(UTC))
    assert document.public_key == session.public_key_der
    assert document.user_data == b"\x12\x20" + bytes(66)
    assert document.pcrs[0] == counting_nsm.describe_pcr(0).data


def test_the_document_is_reused_then_renewed_after_two_hours(counting_nsm: CountingNsm) -> None:
    now = [1000.0]
    user_data = [b"first"]
    session = session_for(counting_nsm, user_data=lambda: user_data[0], clock=lambda: now[0])
    first = session.recipient()
    now[0] += DOCUMENT_LIFETIME - 1
    assert session.recipient() == first and len(counting_nsm.requests) == 1
    user_data[0] = b"second"
    now[0] += 1
    renewed = session.recipient()
    assert renewed != first and len(counting_nsm.requests) == 2
    assert counting_nsm.requests[1] == {
        "user_data": b"second",
        "public_key": session.public_key_der,
    }
    assert DOCUMENT_LIFETIME <= 2 * 3600  # well inside the leaf's three hours


def test_generate_and_decrypt_through_kms(
    kms: LocalKms, counting_nsm: CountingNsm, key_id: str
) -> None:
    session = session_for(counting_nsm)
    blob, key = session.generate_data_key(kms, key_id, CONTEXT, 32)
    assert len(key) == 32 and key not in blob
    assert session.decrypt(kms, key_id, blob, CONTEXT) == key
    # Another boot (a new key pair) of the same image decrypts it too.
    assert session_for(counting_nsm).decrypt(kms, key_id, blob, CONTEXT) == key
    # The key is locked: without the Recipient, KMS refuses.
    with pytest.raises(AccessDenied):
        kms.decrypt(key_id, blob, CONTEXT)


def test_a_plaintext_in_the_answer_is_refused(
    kms: LocalKms, counting_nsm: CountingNsm, key_id: str
) -> None:
    session = session_for(counting_nsm)
    blob, _ = session.generate_data_key(kms, key_id, CONTEXT)

    def leak(result: KmsResult) -> KmsResult:
        return dataclasses.replace(result, plaintext=b"k" * 32)

    leaky = cast(Kms, Tampering(kms, leak))
    with pytest.raises(CryptoError, match="returned a plaintext although a Recipient was sent"):
        session.decrypt(leaky, key_id, blob, CONTEXT)
    with pytest.raises(CryptoError, match="GenerateDataKey .* returned a plaintext"):
        session.generate_data_key(leaky, key_id, CONTEXT)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: dataclasses.replace(r, ciphertext_for_recipient=None), "no CiphertextFor"),
        (lambda r: dataclasses.replace(r, ciphertext_for_recipient=b""), "no CiphertextFor"),
        (lambda r: dataclasses.replace(r, ciphertext_blob=None), "no ciphertext blob"),
        (
            lambda r: dataclasses.replace(
                r,
                ciphertext_for_recipient=build_ciphertext_for_recipient(
                    b"k" * 32,
                    rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
                ),
            ),
            "made for another key",
        ),
    ],
)
def test_a_malformed_answer_is_refused(
    kms: LocalKms, counting_nsm: CountingNsm, key_id: str, change: Any, message: str
) -> None:
    session = session_for(counting_nsm)
    with pytest.raises(CryptoError, match=message) as raised:
        session.generate_data_key(cast(Kms, Tampering(kms, change)), key_id, CONTEXT)
    assert key_id in str(raised.value)


def test_every_call_sends_the_recipient(
    kms: LocalKms, counting_nsm: CountingNsm, key_id: str
) -> None:
    seen: list[Recipient | None] = []

    class Spy:
        def decrypt(self, key: str, blob: bytes, ctx: dict[str, str], rcpt: Any) -> KmsResult:
            seen.append(rcpt)
            return kms.decrypt(key, blob, ctx, rcpt)

        def generate_data_key(self, key: str, ctx: dict[str, str], **kw: Any) -> KmsResult:
            seen.append(kw["recipient"])
            return kms.generate_data_key(key, ctx, **kw)

    session = session_for(counting_nsm)
    blob, _ = session.generate_data_key(cast(Kms, Spy()), key_id, CONTEXT)
    session.decrypt(cast(Kms, Spy()), key_id, blob, CONTEXT)
    assert len(seen) == 2 and all(r == session.recipient() for r in seen)
