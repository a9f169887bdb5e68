"""`enclave verify` checks the migration chain link an enclave reports in enclave-info.

A scripted HTTPS enclave (real TLS, real simulated-NSM documents, real signatures) plays the new
enclave; a second simulated NSM with another PCR0, under the same dev root, plays the old one.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.errors import AttestationError
from enclave_core.runtime.chain import migration_binding
from enclave_core.verify import EnclaveVerification, verify_enclave
from tests.enclave_core.fake_enclave import FakeEnclave

OLD_PCR0 = "a1" * 48
KEY = "1234abcd-0000-4000-8000-000000000001"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeEnclave]:
    server = FakeEnclave(tmp_path)
    yield server
    server.close()


def old_document(folder: Path, user_data: bytes | None, pcr0: str = OLD_PCR0) -> str:
    """A document of the old image (``pcr0``), signed under the dev CA in ``folder/state``."""
    nsm = SimulatedNsm(state_dir=folder / "state", app_dir=folder / "app", pcr0=bytes.fromhex(pcr0))
    return base64.b64encode(nsm.attestation(user_data=user_data, nonce=b"r" * 32)).decode()


def migrated(fake: FakeEnclave, tmp_path: Path, **info: object) -> None:
    """Make the fake report an honest chain link (old PCR0 -> KEY -> its PCR0), then ``info``."""
    binding = migration_binding(OLD_PCR0, KEY, fake.pcr0.hex())
    fake.behaviour.info = {
        "kms_key_id": KEY,
        "previous_pcr0": OLD_PCR0,
        "previous_pcr0_attestation": old_document(tmp_path, binding),
        **info,
    }


def run(fake: FakeEnclave) -> EnclaveVerification:
    return verify_enclave(fake.url, fake.pcr0, root=load_root_pem(fake.root_pem), timeout=10)


def failure(fake: FakeEnclave) -> str:
    with pytest.raises(AttestationError) as exc:
        run(fake)
    return str(exc.value)


def test_a_genesis_enclave_has_no_link_to_verify(fake: FakeEnclave) -> None:
    result = run(fake)
    assert (result.previous_pcr0, result.previous_pcr0_verified) == ("genesis", None)


def test_an_honest_chain_link_verifies(fake: FakeEnclave, tmp_path: Path) -> None:
    migrated(fake, tmp_path)
    result = run(fake)
    assert result.verified and result.pcr0 == fake.pcr0.hex()
    assert (result.previous_pcr0, result.previous_pcr0_verified) == (OLD_PCR0, True)
    assert result.as_dict()["previous_pcr0_verified"] is True


def test_a_document_made_for_another_migration_fails(fake: FakeEnclave, tmp_path: Path) -> None:
    # The old image's genuine document, but bound to another key: replayed.
    replayed = migration_binding(OLD_PCR0, "another-key", fake.pcr0.hex())
    migrated(fake, tmp_path, previous_pcr0_attestation=old_document(tmp_path, replayed))
    assert failure(fake) == (
        f"chain link: the document's user_data does not bind previous PCR0 {OLD_PCR0[:16]}…, "
        f"key {KEY} and PCR0 {fake.pcr0.hex()[:16]}… (made for another migration?)"
    )
    # The same document cannot vouch for the enclave under another key id either.
    migrated(fake, tmp_path, kms_key_id="another-key-2")
    assert "user_data does not bind" in failure(fake)


def test_a_document_of_another_image_fails(fake: FakeEnclave, tmp_path: Path) -> None:
    other = "c3" * 48
    binding = migration_binding(OLD_PCR0, KEY, fake.pcr0.hex())
    migrated(fake, tmp_path, previous_pcr0_attestation=old_document(tmp_path, binding, other))
    assert failure(fake) == (
        f"chain link: the document's PCR0 {other} is not the previous PCR0 {OLD_PCR0}"
    )


def test_a_document_from_another_root_fails(fake: FakeEnclave, tmp_path: Path) -> None:
    binding = migration_binding(OLD_PCR0, KEY, fake.pcr0.hex())
    foreign = old_document(tmp_path / "elsewhere", binding)  # its own dev CA
    migrated(fake, tmp_path, previous_pcr0_attestation=foreign)
    assert failure(fake).startswith("chain link: the previous enclave's document: certificate")


def test_no_unverified_pass(fake: FakeEnclave, tmp_path: Path) -> None:
    migrated(fake, tmp_path, previous_pcr0_attestation=None)
    assert failure(fake).startswith("previous_pcr0_attestation: missing")
    migrated(fake, tmp_path, previous_pcr0=None)
    assert failure(fake).startswith("previous_pcr0: enclave-info reports None")
    migrated(fake, tmp_path, previous_pcr0_attestation="not base64!")
    assert failure(fake) == "previous_pcr0_attestation: not base64"
    migrated(fake, tmp_path, kms_key_id=None)
    assert failure(fake) == "chain link: enclave-info names no kms_key_id to check it against"
