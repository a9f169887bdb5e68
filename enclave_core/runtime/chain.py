"""The migration chain link: an old enclave's attestation document vouching for its successor.

When an enclave exports its secrets to a new key (:mod:`enclave_core.runtime.export`), it records
its own PCR0 as ``MigrationPreviousPCR0`` and an attestation document whose ``user_data`` is
:func:`migration_binding` of (its PCR0, the new key id, the target PCR0). The new enclave, and
later ``enclave verify``, check that document with :func:`verify_chain_link`: signed by the NSM
(chain to the trusted root at the document's own timestamp, since the old enclave may be long
gone), made by an image whose PCR0 is the claimed previous one, and bound to exactly this key and
this successor, so it cannot be replayed to vouch for another migration.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

from cryptography import x509
from loguru import logger

from enclave_core.config import Config
from enclave_core.crypto.attestation import PCR_SIZE, VerifiedDocument, verify_document
from enclave_core.crypto.aws_root import aws_nitro_root, load_root_pem
from enclave_core.errors import AttestationError
from enclave_core.runtime.state import RuntimeState

#: The domain-separation tag of the binding; a new layout gets a new version.
BINDING_TAG = "simple-enclave-migration-v1"
#: Secrets-backend parameter names of the chain link.
PREVIOUS_PCR0_PARAM = "MigrationPreviousPCR0"
PREVIOUS_ATTESTATION_PARAM = "MigrationPreviousPCR0Attestation"
#: The ``previous_pcr0`` of an enclave that was never migrated to.
GENESIS = "genesis"
#: The attestation backend whose documents chain to the dev root rather than AWS's.
SIMULATED_BACKEND = "simulated"
DEV_ROOT_FILE = "dev-root.pem"
_PCR0_HEX = re.compile(rf"^[0-9a-f]{{{2 * PCR_SIZE}}}$")


def normalise_pcr0(value: str, what: str) -> str:
    """Return ``value`` as 96 lower-case hex characters; AttestationError naming ``what`` if not."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if not _PCR0_HEX.match(text):
        raise AttestationError(f"{what}: expected {2 * PCR_SIZE} hex characters")
    return text


def migration_binding(previous_pcr0: str, new_key_id: str, target_pcr0: str) -> bytes:
    """The 32-byte ``user_data`` of a chain-link document.

    SHA-256 over the UTF-8 string ``"simple-enclave-migration-v1\\n" + previous_pcr0 + "\\n" +
    new_key_id + "\\n" + target_pcr0 + "\\n"`` (PCR0 values as lower-case hex). Every field ends
    in a newline and none may contain one, so no two triples share an encoding.
    """
    previous = normalise_pcr0(previous_pcr0, "migration binding: previous PCR0")
    target = normalise_pcr0(target_pcr0, "migration binding: target PCR0")
    if not new_key_id or "\n" in new_key_id:
        raise AttestationError("migration binding: the key id must be non-empty, on one line")
    text = f"{BINDING_TAG}\n{previous}\n{new_key_id}\n{target}\n"
    return hashlib.sha256(text.encode("utf-8")).digest()


def attestation_root(config: Config) -> x509.Certificate:
    """The root that this deployment's attestation documents chain to.

    The simulated NSM's dev root (``state_dir/dev-root.pem``) when the attestation backend is
    ``simulated`` (development only); the pinned AWS Nitro root G1 otherwise.
    """
    if config.attestation.backend == SIMULATED_BACKEND:
        return load_root_pem(config.state_dir / DEV_ROOT_FILE)
    return aws_nitro_root()


def verify_chain_link(
    document: bytes,
    *,
    previous_pcr0: str,
    key_id: str,
    pcr0: str,
    root: x509.Certificate,
) -> VerifiedDocument:
    """Check that ``document`` is the previous image's vouching for this key and this image.

    :param document: the old enclave's attestation document (COSE_Sign1 bytes).
    :param previous_pcr0: the PCR0 the chain claims came before (hex).
    :param key_id: the KMS key the secrets were migrated to (the successor's ``KMSKeyID``).
    :param pcr0: the successor's own, verified PCR0 (hex).
    :param root: the trust anchor (:func:`attestation_root`).
    :raises AttestationError: naming the check that failed.
    """
    previous = normalise_pcr0(previous_pcr0, "chain link: previous PCR0")
    own = normalise_pcr0(pcr0, "chain link: PCR0")
    try:
        verified = verify_document(document, root=root)  # at the document's own timestamp
    except AttestationError as exc:
        raise AttestationError(f"chain link: the previous enclave's document: {exc}") from None
    got = verified.pcrs.get(0)
    if got is None or verified.debug_mode or got == bytes(PCR_SIZE):
        raise AttestationError(
            "chain link: the previous enclave's document is from a debug-mode enclave or has no "
            "PCR0"
        )
    if not hmac.compare_digest(got.hex(), previous):
        raise AttestationError(
            f"chain link: the document's PCR0 {got.hex()} is not the previous PCR0 {previous}"
        )
    expected = migration_binding(previous, key_id, own)
    if verified.user_data is None or not hmac.compare_digest(verified.user_data, expected):
        raise AttestationError(
            f"chain link: the document's user_data does not bind previous PCR0 {previous[:16]}…, "
            f"key {key_id} and PCR0 {own[:16]}… (made for another migration?)"
        )
    return verified


def record_chain_link(state: RuntimeState) -> None:
    """After boot: set ``state.previous_pcr0`` from the secrets backend, verified.

    No ``MigrationPreviousPCR0``: ``"genesis"``. Otherwise the stored document must pass
    :func:`verify_chain_link` for this enclave's key and PCR0; if it does not, ``previous_pcr0``
    stays None (enclave-info reports null) and a warning names the failed check. Never raises for a
    bad link: a broken chain is reported, it does not stop the enclave.
    """
    assert state.secrets is not None and state.kms_key_id is not None and state.pcr0 is not None
    state.previous_pcr0, state.previous_pcr0_attestation = None, None
    previous = state.secrets.get(PREVIOUS_PCR0_PARAM)
    if previous is None:
        state.previous_pcr0 = GENESIS
        return
    try:
        stored = state.secrets.get(PREVIOUS_ATTESTATION_PARAM)
        if stored is None:
            raise AttestationError(f"chain link: parameter {PREVIOUS_ATTESTATION_PARAM} is absent")
        try:
            document = base64.b64decode(stored, validate=True)
        except (binascii.Error, ValueError):
            raise AttestationError(
                f"chain link: parameter {PREVIOUS_ATTESTATION_PARAM} is not base64"
            ) from None
        verify_chain_link(
            document,
            previous_pcr0=previous,
            key_id=state.kms_key_id,
            pcr0=state.pcr0,
            root=attestation_root(state.config),
        )
    except AttestationError as exc:
        logger.bind(key_id=state.kms_key_id, error=str(exc)).warning(
            "migration chain link does not verify; previous_pcr0 reported as null"
        )
        return
    state.previous_pcr0 = normalise_pcr0(previous, PREVIOUS_PCR0_PARAM)
    state.previous_pcr0_attestation = base64.b64encode(document).decode("ascii")
    logger.bind(previous_pcr0=state.previous_pcr0, key_id=state.kms_key_id).info(
        "migration chain link verified"
    )
