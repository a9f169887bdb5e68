"""The runtime's view of its migration chain.

After the data keys are open, :func:`record_chain` reads the chain this enclave's own manifest
points at: its predecessor's PCR0 (from the manifest itself, which the host cannot alter, so
deleting ``MigrationPreviousPCR0`` hides nothing) and the links ``Chain/<n>`` back to the first
image, each verified with :func:`enclave_core.protocol.migration_chain.verify_links`. A lost or
broken link is reported (``migration_chain_complete`` false, a warning naming it), never fatal:
every ciphertext was already traced by the manifest.
"""

from __future__ import annotations

from loguru import logger

from enclave_core.crypto.attested_record import AttestedRecord, read_record
from enclave_core.errors import AttestationError, TamperingDetected
from enclave_core.pcrs import normalise_pcr
from enclave_core.protocol.migration_chain import GENESIS, ChainReport, check_link, verify_links
from enclave_core.runtime.manifest import chain_param
from enclave_core.runtime.state import RuntimeState
from enclave_core.runtime.trust import root_of

__all__ = ["GENESIS", "normalise_pcr0", "record_chain"]


def normalise_pcr0(value: str, what: str) -> str:
    """``value`` as 96 lower-case hex, never all zero; AttestationError naming ``what``."""
    try:
        return normalise_pcr(value, what)
    except Exception as exc:  # ValidationError, re-raised as the attestation failure it is
        raise AttestationError(str(exc)) from None


def _walk(state: RuntimeState, length: int, last: str | None) -> ChainReport:
    """Read ``Chain/length`` back to ``Chain/1`` while each link is the one the next names."""
    assert state.secrets is not None
    newest_first: list[AttestedRecord] = []
    expected = last
    problem = None
    for index in range(length, 0, -1):
        try:
            link = read_record(state.secrets, chain_param(index), "link", root=root_of(state))
            if link is not None:
                check_link(link)
        except (AttestationError, TamperingDetected) as exc:
            problem = f"{chain_param(index)}: {exc}"
            break
        if link is None:
            problem = f"parameter {chain_param(index)} is missing"
            break
        if link.digest != expected or link.body.get("index") != index:
            problem = f"{chain_param(index)} is not the link the chain names there"
            break
        newest_first.append(link)
        expected = link.body.get("previous_link")
    links = list(reversed(newest_first))
    if not links:
        return ChainReport(links=[], complete=length == 0, problem=problem)
    try:
        report = verify_links(
            [link.as_json() for link in links],
            root=root_of(state),
            pcr0=str(state.pcr0),
            key_id=state.kms_key_id,
            last_link=last,
            require_start=False,
        )
    except AttestationError as exc:
        return ChainReport(links=[], complete=False, problem=str(exc))
    if problem is not None:
        report.complete, report.problem = False, problem
    return report


def record_chain(state: RuntimeState) -> None:
    """Set ``previous_pcr0``, ``previous_pcr0_attestation`` and the chain from the manifest."""
    manifest = state.manifest
    assert manifest is not None
    state.previous_pcr0 = manifest.previous_pcr0
    state.previous_pcr0_attestation = None
    if manifest.previous_pcr0 == GENESIS:
        state.chain = ChainReport()
        return
    state.chain = _walk(state, manifest.chain_length, manifest.last_link)
    if state.chain.links and state.chain.links[-1].digest == manifest.last_link:
        state.previous_pcr0_attestation = state.chain.links[-1].attestation
    if not state.chain.complete:
        logger.bind(key_id=state.kms_key_id, error=state.chain.problem).warning(
            "the migration chain cannot be shown in full"
        )
    else:
        logger.bind(previous_pcr0=state.previous_pcr0, links=len(state.chain.links)).info(
            "migration chain verified"
        )
