"""The ``local`` KMS's Recipient flow, with real documents from the simulated NSM.

The simulated NSM writes its dev root to ``<state dir>/dev-root.pem``; the KMS trusts exactly
that root, as AWS KMS trusts only the AWS Nitro root.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from enclave_plugins.local_kms import LocalKms
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.crypto import cose
from enclave_core.crypto.attestation import verify_document
from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.crypto.cms import open_ciphertext_for_recipient
from enclave_core.crypto.devca import DevCa
from enclave_core.errors import AccessDenied, CryptoError, InvalidKeyState, ValidationError
from enclave_core.kmspolicy.canonical import locked_policy
from enclave_core.plugin.interfaces import KeyInfo, Recipient
from tests.vectors import NITRO as TESTDATA

CONTEXT = {"app": "hello", "purpose": "static-secret", "secret": "signing_key"}


def spki(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def recipient_for(nsm: SimulatedNsm, key: rsa.RSAPrivateKey) -> Recipient:
    return Recipient(attestation_document=nsm.attestation(public_key=spki(key)))


def locked_key(kms: LocalKms, nsm: SimulatedNsm) -> tuple[KeyInfo, bytes]:
    """A key locked to ``nsm``'s PCR0, and a blob encrypted under it before the lock."""
    info = kms.create_key()
    blob = kms.encrypt(info.key_id, b"s" * 32, CONTEXT)
    pcr0 = nsm.describe_pcr(0).data.hex()
    policy = locked_policy(pcr0_hex=pcr0, principal_arn=kms.caller_arn())
    kms.put_key_policy(info.key_id, policy, bypass_lockout_safety_check=True)
    return info, blob


def test_recipient_decrypt_answers_with_cms_only(
    kms: LocalKms, nsm: SimulatedNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    info, blob = locked_key(kms, nsm)
    result = kms.decrypt(info.key_id, blob, CONTEXT, recipient_for(nsm, rsa_key))
    assert result.plaintext is None and result.ciphertext_blob is None
    assert result.key_id == info.arn
    envelope = result.ciphertext_for_recipient
    assert envelope is not None and b"s" * 32 not in envelope
    assert envelope[:2] == b"\x30\x80"  # BER indefinite length, as KMS sends it
    assert open_ciphertext_for_recipient(envelope, rsa_key) == b"s" * 32
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CryptoError, match="made for another key"):
        open_ciphertext_for_recipient(envelope, other)


def test_recipient_generate_data_key(
    kms: LocalKms, nsm: SimulatedNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    info, _ = locked_key(kms, nsm)
    recipient = recipient_for(nsm, rsa_key)
    result = kms.generate_data_key(info.key_id, CONTEXT, number_of_bytes=32, recipient=recipient)
    assert result.plaintext is None
    assert result.ciphertext_for_recipient is not None and result.ciphertext_blob is not None
    key = open_ciphertext_for_recipient(result.ciphertext_for_recipient, rsa_key)
    assert len(key) == 32
    again = kms.decrypt(info.key_id, result.ciphertext_blob, CONTEXT, recipient)
    assert again.ciphertext_for_recipient is not None
    assert open_ciphertext_for_recipient(again.ciphertext_for_recipient, rsa_key) == key


def test_a_recipient_on_an_unlocked_key_still_gets_no_plaintext(
    kms: LocalKms, nsm: SimulatedNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    info = kms.create_key()  # default policy: the account root may do everything
    result = kms.generate_data_key(info.key_id, CONTEXT, recipient=recipient_for(nsm, rsa_key))
    assert result.plaintext is None and result.ciphertext_for_recipient is not None


def test_another_pcr0_is_denied(
    kms: LocalKms, nsm: SimulatedNsm, state_dir: Path, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    info, blob = locked_key(kms, nsm)
    (tmp_path / "app" / "app.py").write_text("print('changed')\n")  # a new image
    changed = SimulatedNsm(state_dir=state_dir, app_dir=tmp_path / "app")
    assert changed.describe_pcr(0).data != nsm.describe_pcr(0).data
    for call in (
        lambda r: kms.decrypt(info.key_id, blob, CONTEXT, r),
        lambda r: kms.generate_data_key(info.key_id, CONTEXT, recipient=r),
    ):
        with pytest.raises(AccessDenied) as raised:
            call(recipient_for(changed, rsa_key))
        message = str(raised.value)
        assert info.key_id in message and "kms:RecipientAttestation:PCR0" in message
        assert "the request's value differs" in message


def test_an_expired_document_is_denied(
    kms: LocalKms, state_dir: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    ca = DevCa(state_dir)
    past = datetime.now(UTC) - timedelta(hours=4)  # the leaf lived 3 hours
    module_id = f"{ca.instance_id()}-enc0123456789abcdef"
    leaf = ca.issue_leaf(module_id, now=past)
    payload = cose.build_document(
        module_id=module_id,
        timestamp_ms=int(past.timestamp() * 1000),
        pcrs={i: bytes(48) if i else b"\x01" * 48 for i in range(16)},
        certificate=leaf.certificate,
        cabundle=leaf.cabundle,
        public_key=spki(rsa_key),
        user_data=None,
        nonce=None,
    )
    document = cose.sign1(payload, leaf.private_key)
    root = load_root_pem(state_dir / "dev-root.pem")
    verify_document(document, root=root, at=past + timedelta(minutes=1))  # genuine, but old
    info = kms.create_key()
    with pytest.raises(AccessDenied, match="attestation document does not verify: .*") as raised:
        kms.generate_data_key(info.key_id, CONTEXT, recipient=Recipient(document))
    assert f"kms:GenerateDataKey on key {info.key_id} denied" in str(raised.value)


def test_an_aws_signed_document_is_denied_under_the_dev_root(
    kms: LocalKms, nsm: SimulatedNsm
) -> None:
    nsm.attestation()  # creates the dev CA and its root file
    info = kms.create_key()
    real = (TESTDATA / "nitrite-2024-09-07.cbor").read_bytes()
    with pytest.raises(AccessDenied, match="attestation document does not verify"):
        kms.generate_data_key(info.key_id, CONTEXT, recipient=Recipient(real))


def test_a_tampered_document_is_denied(
    kms: LocalKms, nsm: SimulatedNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    info, blob = locked_key(kms, nsm)
    document = bytearray(recipient_for(nsm, rsa_key).attestation_document)
    document[-10] ^= 0x01  # inside the signature
    with pytest.raises(AccessDenied, match="attestation document does not verify"):
        kms.decrypt(info.key_id, blob, CONTEXT, Recipient(bytes(document)))


def test_without_a_trusted_root_every_recipient_is_denied(
    state_dir: Path, nsm: SimulatedNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    recipient = recipient_for(nsm, rsa_key)
    for kms, reason in (
        (LocalKms(state_dir / "kms"), "no attestation root is configured"),
        (
            LocalKms(state_dir / "kms", root_pem=state_dir / "nope.pem"),
            "no usable attestation root",
        ),
    ):
        info = kms.create_key()
        with pytest.raises(AccessDenied, match=reason):
            kms.generate_data_key(info.key_id, CONTEXT, recipient=recipient)


@pytest.mark.parametrize(
    "public_key",
    [
        None,
        b"my super secret key",
        spki(ec.generate_private_key(ec.SECP384R1())),
        spki(rsa.generate_private_key(public_exponent=65537, key_size=1024)),  # noqa: S505
    ],
)
def test_a_document_without_an_rsa_2048_key_is_refused(
    kms: LocalKms, nsm: SimulatedNsm, public_key: bytes | None
) -> None:
    info = kms.create_key()
    recipient = Recipient(nsm.attestation(public_key=public_key))
    with pytest.raises(ValidationError, match="not an RSA SubjectPublicKeyInfo of at least 2048"):
        kms.generate_data_key(info.key_id, CONTEXT, recipient=recipient)


def test_only_rsaes_oaep_sha_256_is_accepted(
    kms: LocalKms, nsm: SimulatedNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    info = kms.create_key()
    document = recipient_for(nsm, rsa_key).attestation_document
    with pytest.raises(ValidationError, match="KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256"):
        kms.generate_data_key(
            info.key_id, CONTEXT, recipient=Recipient(document, "RSAES_OAEP_SHA_1")
        )


def test_disabled_or_pending_keys_are_invalid_even_with_a_valid_recipient(
    kms: LocalKms, nsm: SimulatedNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    recipient = recipient_for(nsm, rsa_key)
    disabled = kms.create_key()
    kms.disable_key(disabled.key_id)  # before the lock: the default policy allows it
    pcr0 = nsm.describe_pcr(0).data.hex()
    policy = locked_policy(pcr0_hex=pcr0, principal_arn=kms.caller_arn())
    kms.put_key_policy(disabled.key_id, policy, bypass_lockout_safety_check=True)
    with pytest.raises(InvalidKeyState, match=f"{disabled.key_id} is Disabled"):
        kms.generate_data_key(disabled.key_id, CONTEXT, recipient=recipient)
    pending, blob = locked_key(kms, nsm)
    kms.schedule_key_deletion(pending.key_id, 7)  # the locked policy allows this
    with pytest.raises(InvalidKeyState, match=f"{pending.key_id} is PendingDeletion"):
        kms.decrypt(pending.key_id, blob, CONTEXT, recipient)


def test_other_pcrs_feed_their_condition_keys(
    kms: LocalKms, nsm: SimulatedNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    pcrs = {i: nsm.describe_pcr(i).data.hex() for i in (0, 1, 4)}
    recipient = recipient_for(nsm, rsa_key)

    def key_requiring(pcr4: str) -> str:
        condition = {
            "kms:RecipientAttestation:ImageSha384": pcrs[0],
            "kms:RecipientAttestation:PCR1": pcrs[1],
            "kms:RecipientAttestation:PCR4": pcr4,
        }
        statement = {
            "Effect": "Allow",
            "Principal": {"AWS": kms.caller_arn()},
            "Action": "kms:GenerateDataKey",
            "Resource": "*",
            "Condition": {"StringEquals": condition},
        }
        info = kms.create_key()
        policy = {"Version": "2012-10-17", "Statement": [statement]}
        kms.put_key_policy(info.key_id, policy, bypass_lockout_safety_check=True)
        return info.key_id

    result = kms.generate_data_key(key_requiring(pcrs[4]), CONTEXT, recipient=recipient)
    assert result.ciphertext_for_recipient is not None
    with pytest.raises(AccessDenied, match="StringEquals kms:RecipientAttestation:PCR4"):
        kms.generate_data_key(key_requiring("00" * 48), CONTEXT, recipient=recipient)


def test_a_grant_decrypts_a_locked_key_with_or_without_a_recipient(
    kms: LocalKms, nsm: SimulatedNsm, state_dir: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A grant made before the lock outlives it: with a Recipient the answer is still only a
    CiphertextForRecipient; without one it is the plaintext, attestation or not."""
    attacker_role = "arn:aws:iam::000000000000:role/attacker"
    attacker = LocalKms(state_dir / "kms", principal=attacker_role, root_pem=kms.root_pem)
    info = kms.create_key()
    blob = kms.encrypt(info.key_id, b"s" * 32, CONTEXT)
    kms.create_grant(info.key_id, grantee_principal=attacker_role, operations=["Decrypt"])
    pcr0 = nsm.describe_pcr(0).data.hex()
    policy = locked_policy(pcr0_hex=pcr0, principal_arn=kms.caller_arn())
    kms.put_key_policy(info.key_id, policy, bypass_lockout_safety_check=True)
    with pytest.raises(AccessDenied, match="the request has no attestation document"):
        kms.decrypt(info.key_id, blob, CONTEXT)  # the enclave's own role: policy only
    sealed = attacker.decrypt(info.key_id, blob, CONTEXT, recipient_for(nsm, rsa_key))
    assert sealed.plaintext is None and sealed.ciphertext_for_recipient is not None
    assert open_ciphertext_for_recipient(sealed.ciphertext_for_recipient, rsa_key) == b"s" * 32
    assert attacker.decrypt(info.key_id, blob, CONTEXT).plaintext == b"s" * 32
