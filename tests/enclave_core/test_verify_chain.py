"""`enclave verify` checks the migration chain an enclave reports in enclave-info.

A scripted HTTPS enclave (real TLS, real simulated-NSM documents, real signatures) plays the
enclave; simulated NSMs with other PCR0s, under the same dev root, play its predecessors and
write their chain links as the runtime's export does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from enclave_plugins.simulated_attestation import SimulatedNsm

from enclave_core.crypto.attested_record import make_record, record_digest
from enclave_core.crypto.aws_root import load_root_pem
from enclave_core.errors import AttestationError
from enclave_core.verify import EnclaveVerification, verify_enclave
from tests.doubles.fake_enclave import FakeEnclave

FIRST = "a1" * 48
SECOND = "b2" * 48
KEY = "1234abcd-0000-4000-8000-000000000001"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeEnclave]:
    server = FakeEnclave(tmp_path)
    yield server
    server.close()


def link(
    folder: Path, index: int, source: str, target: str, previous: str | None, **body: Any
) -> dict[str, Any]:
    """The link an image ``source`` writes when it hands over to ``target`` (dev CA of
    ``folder/state``)."""
    nsm = SimulatedNsm(
        state_dir=folder / "state", app_dir=folder / "app", pcr0=bytes.fromhex(source)
    )
    content = {
        "app": "fake",
        "migration": f"m-{index}",
        "index": index,
        "previous_link": previous,
        "from_pcr0": source,
        "from_pcr8": None,
        "to_pcr0": target,
        "to_pcr8": None,
        "key_id": KEY if index else "",
        "key_arn": f"arn:aws:kms:us-east-1:000000000000:key/{KEY}",
        "policy_sha256": "00" * 32,
        "entries": {"StorageDEK": "11" * 32},
        **body,
    }
    return make_record(nsm, "link", content)


def chain(fake: FakeEnclave, tmp_path: Path, *images: str) -> list[dict[str, Any]]:
    """Links from ``images[0]`` through the rest to the fake's own PCR0."""
    path = [*images, fake.pcr0.hex()]
    links: list[dict[str, Any]] = []
    for index, (source, target) in enumerate(zip(path, path[1:], strict=False), start=1):
        previous = record_digest(links[-1]) if links else None
        links.append(link(tmp_path, index, source, target, previous))
    return links


def migrated(fake: FakeEnclave, links: list[dict[str, Any]], **info: object) -> None:
    """Make the fake report ``links`` honestly, then override ``info``."""
    fake.behaviour.info = {
        "kms_key_id": KEY,
        "key_origin": "migration",
        "previous_pcr0": links[-1]["body"]["from_pcr0"] if links else "genesis",
        "previous_pcr0_attestation": links[-1]["attestation"] if links else None,
        "migration_chain": links,
        **info,
    }


def run(fake: FakeEnclave, allowed: frozenset[str] | None = None) -> EnclaveVerification:
    root = load_root_pem(fake.root_pem)
    return verify_enclave(fake.url, fake.pcr0, root=root, timeout=10, allowed_previous=allowed)


def failure(fake: FakeEnclave, allowed: frozenset[str] | None = None) -> str:
    with pytest.raises(AttestationError) as exc:
        run(fake, allowed)
    return str(exc.value)


def test_a_genesis_enclave_has_no_link_to_verify(fake: FakeEnclave) -> None:
    result = run(fake)
    assert (result.previous_pcr0, result.previous_pcr0_verified) == ("genesis", None)
    assert result.migration_chain == (fake.pcr0.hex(),) and result.migration_chain_complete


def test_an_honest_chain_of_two_links_verifies(fake: FakeEnclave, tmp_path: Path) -> None:
    migrated(fake, chain(fake, tmp_path, FIRST, SECOND))
    result = run(fake)
    assert result.verified and result.pcr0 == fake.pcr0.hex()
    assert (result.previous_pcr0, result.previous_pcr0_verified) == (SECOND, True)
    assert result.migration_chain == (FIRST, SECOND, fake.pcr0.hex())
    assert result.as_dict()["migration_chain"] == [FIRST, SECOND, fake.pcr0.hex()]
    assert result.migration_chain_complete


def test_a_genesis_claim_from_a_migrated_key_is_refused(fake: FakeEnclave) -> None:
    fake.behaviour.info = {"key_origin": "migration"}  # previous_pcr0 stays "genesis"
    assert "the chain is being hidden" in failure(fake)


def test_the_allowed_predecessors_are_enforced(fake: FakeEnclave, tmp_path: Path) -> None:
    migrated(fake, chain(fake, tmp_path, FIRST, SECOND))
    assert run(fake, frozenset({FIRST, SECOND})).verified
    assert failure(fake, frozenset({SECOND})).startswith(
        f"previous PCR0 {FIRST[:16]}… (chain link 1) is not one of --allow-previous-pcr0"
    )


def test_a_chain_missing_its_oldest_links_is_reported_incomplete(
    fake: FakeEnclave, tmp_path: Path
) -> None:
    links = chain(fake, tmp_path, FIRST, SECOND)
    migrated(fake, links[1:])  # link 1 was deleted from the parameter store
    result = run(fake)
    assert result.previous_pcr0 == SECOND and not result.migration_chain_complete
    assert result.migration_chain == (SECOND, fake.pcr0.hex())
    # With pins, every predecessor must be proven.
    assert "not every predecessor can be checked" in failure(fake, frozenset({FIRST, SECOND}))


def test_links_that_do_not_connect_fail(fake: FakeEnclave, tmp_path: Path) -> None:
    links = chain(fake, tmp_path, FIRST, SECOND)
    stray = link(tmp_path, 2, SECOND, fake.pcr0.hex(), previous="ff" * 32)
    migrated(fake, [links[0], stray])
    assert failure(fake) == "chain link 2 does not name link 1 as the one before it"


def test_a_link_for_another_key_or_successor_fails(fake: FakeEnclave, tmp_path: Path) -> None:
    migrated(fake, chain(fake, tmp_path, FIRST), kms_key_id="another-key")
    assert "is for key" in failure(fake)
    other = link(tmp_path, 1, FIRST, "c3" * 48, None)
    migrated(fake, [other])
    assert "hands over to PCR0 c3c3" in failure(fake)


def test_a_link_from_another_root_or_altered_fails(fake: FakeEnclave, tmp_path: Path) -> None:
    foreign = link(tmp_path / "elsewhere", 1, FIRST, fake.pcr0.hex(), None)  # its own dev CA
    migrated(fake, [foreign])
    assert failure(fake).startswith("chain link: link record: its attestation document does not")
    altered = chain(fake, tmp_path, FIRST)
    altered[0]["body"]["entries"] = {"StorageDEK": "22" * 32}
    migrated(fake, altered)
    assert "does not bind this body" in failure(fake)


def test_no_unverified_pass(fake: FakeEnclave, tmp_path: Path) -> None:
    links = chain(fake, tmp_path, FIRST)
    migrated(fake, links, previous_pcr0_attestation=None)
    assert failure(fake).startswith("previous_pcr0_attestation is not the newest chain link")
    migrated(fake, links, previous_pcr0=None)
    assert failure(fake).startswith("previous_pcr0: enclave-info reports None")
    migrated(fake, [], previous_pcr0=FIRST)
    assert failure(fake).startswith("migration_chain: no chain link proves previous PCR0")
    migrated(fake, links, kms_key_id=None)
    assert failure(fake) == "chain link: enclave-info names no kms_key_id to check it against"
