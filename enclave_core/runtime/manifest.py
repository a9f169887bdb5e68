"""The verified ``CiphertextManifest`` and the parameter names of the sealed data keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from enclave_core.crypto.attested_record import AttestedRecord

MANIFEST_PARAM = "CiphertextManifest"
LOCK_PARAM = "GenerationLock"
CHAIN_PREFIX = "Chain/"
GENESIS = "genesis"


def chain_param(index: int) -> str:
    """The parameter of chain link ``index`` (1 = the first migration)."""
    return f"{CHAIN_PREFIX}{index}"


def blob_digest(blob: bytes) -> str:
    """What a manifest lists for a ciphertext: the SHA-256 (hex) of its bytes."""
    return hashlib.sha256(blob).hexdigest()


@dataclass
class Manifest:
    """The verified ``CiphertextManifest``: who vouches, for which ciphertexts, and the chain."""

    record: AttestedRecord
    entries: dict[str, str]
    previous_pcr0: str  # "genesis" or the predecessor's PCR0
    chain_length: int
    last_link: str | None  # the digest of the newest chain link

    @property
    def is_link(self) -> bool:
        """Whether this is the predecessor's link, not yet replaced by our own manifest."""
        return self.record.kind == "link"
