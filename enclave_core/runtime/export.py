"""export-key: re-encrypt this enclave's secrets for its successor, and only for its successor.

The supervisor names the new key (``MigrationKMSKeyID``) and the new image's PCR0
(``MigrationTargetPCR0``), but it is not trusted to have chosen them honestly: anyone who can
write parameters could name a key of their own. So before anything leaves, :func:`export_keys`
reads the target key's policy itself, through KMS, and refuses, naming the reason, unless:

- the key is Enabled and is not the key in use;
- nobody can change its policy, create grants or replicate it (``locked``);
- Decrypt (and every other way to plaintext) is possible only under an attestation whose PCR0 is
  exactly ``MigrationTargetPCR0`` (``attested_pcr0 == {target}``, no unconditioned decrypt).

Then every static secret and the storage data key, already in memory since boot, are encrypted
under the new key with their usual encryption contexts and written as ``Migration/.../Ciphertext``,
with ``MigrationPreviousPCR0`` and a fresh attestation document binding (this PCR0, the new key,
the target PCR0) (:func:`enclave_core.runtime.chain.migration_binding`). The chain link is
written first and the storage key last: once ``Migration/StorageDEK/Ciphertext`` is there, the
export is complete. Exporting again for the same migration rewrites the same parameters.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from loguru import logger

from enclave_core.errors import (
    AccessDenied,
    AttestationError,
    EnclaveError,
    InvalidKeyState,
    NotFound,
    StateConflict,
)
from enclave_core.kms_policy import analyse
from enclave_core.runtime.boot import static_secret_context, storage_dek_context
from enclave_core.runtime.chain import (
    PREVIOUS_ATTESTATION_PARAM,
    PREVIOUS_PCR0_PARAM,
    migration_binding,
    normalise_pcr0,
)
from enclave_core.runtime.state import RuntimeState

NEW_KEY_PARAM = "MigrationKMSKeyID"
TARGET_PCR0_PARAM = "MigrationTargetPCR0"
MIGRATION_PREFIX = "Migration/"
DEK_NAME = "StorageDEK"
NONCE_BYTES = 32
NO_MIGRATION = "no migration in progress"


class ExportRefused(AccessDenied):
    """The target key is not one only the new image can use: nothing was exported (403)."""

    title = "Export refused"


class NotReady(EnclaveError):
    """Boot has not opened the secrets yet, so there is nothing to export (503)."""

    http_status = 503
    title = "Not ready"


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote: the names exported, this enclave's PCR0 and the new key."""

    exported: list[str]
    pcr0: str
    new_key_id: str

    def as_json(self) -> dict[str, Any]:
        """The 200 body of ``POST /v1/export-key``."""
        return {"exported": list(self.exported), "pcr0": self.pcr0, "new_key_id": self.new_key_id}


def migration_param(name: str) -> str:
    """The parameter holding the migrated ciphertext of ``name`` (a secret or ``StorageDEK``)."""
    return f"{MIGRATION_PREFIX}{name}/Ciphertext"


def check_target_key(state: RuntimeState, key_id: str, target_pcr0: str) -> None:
    """Refuse (ExportRefused, naming why) unless only ``target_pcr0`` can ever decrypt under it."""
    assert state.kms is not None
    refuse = f"target key {key_id}"
    if key_id == state.kms_key_id:
        raise ExportRefused(f"{refuse} is the key in use: a migration needs a new key")
    try:
        info = state.kms.describe_key(key_id)
    except NotFound:
        raise ExportRefused(f"{refuse} does not exist") from None
    except (AccessDenied, InvalidKeyState) as exc:
        raise ExportRefused(f"{refuse} cannot be described: {exc}") from None
    if state.kms_key_id in (info.key_id, info.arn):
        raise ExportRefused(f"{refuse} is the key in use: a migration needs a new key")
    if info.state != "Enabled":
        raise ExportRefused(f"{refuse} is {info.state}, not Enabled")
    try:
        policy = state.kms.get_key_policy(key_id)
    except (NotFound, AccessDenied, InvalidKeyState) as exc:
        raise ExportRefused(f"{refuse} policy cannot be read: {exc}") from None
    analysis = analyse(policy, pcr0_hex=target_pcr0)
    if not analysis.locked:
        why = "; ".join(r for r in analysis.reasons if "the policy can change" in r)
        raise ExportRefused(f"{refuse} policy can be changed: {why}")
    if analysis.unconditioned_decrypt:
        why = "; ".join(r for r in analysis.reasons if "without an attestation" in r)
        raise ExportRefused(f"{refuse} policy lets a principal decrypt without attestation: {why}")
    if target_pcr0 not in analysis.attested_pcr0:
        admitted = ", ".join(sorted(p[:16] + "…" for p in analysis.attested_pcr0)) or "none"
        raise ExportRefused(
            f"{refuse} policy does not let the target PCR0 {target_pcr0[:16]}… decrypt "
            f"(it admits PCR0 {admitted})"
        )
    others = sorted(analysis.attested_pcr0 - {target_pcr0})
    if others:
        raise ExportRefused(
            f"{refuse} policy also lets PCR0 {', '.join(p[:16] + '…' for p in others)} decrypt, "
            f"besides the target PCR0 {target_pcr0[:16]}…"
        )


def _migration_target(state: RuntimeState) -> tuple[str, str]:
    assert state.secrets is not None
    key_id = state.secrets.get(NEW_KEY_PARAM)
    target = state.secrets.get(TARGET_PCR0_PARAM)
    if not key_id or not target:
        raise StateConflict(NO_MIGRATION)
    try:
        return key_id, normalise_pcr0(target, TARGET_PCR0_PARAM)
    except AttestationError as exc:
        raise StateConflict(str(exc)) from None


def _plaintexts(state: RuntimeState) -> list[tuple[str, bytes, dict[str, str]]]:
    """(name, key, context) of every static secret and the storage data key, from memory."""
    assert state.storage_dek is not None
    app = state.config.name
    items = []
    for secret in state.config.secrets.static:
        value = state.static_env.get(secret.env_var)
        if value is None:
            raise NotReady(f"static secret {secret.name!r} is not open in this enclave")
        items.append((secret.name, bytes.fromhex(value), static_secret_context(app, secret.name)))
    items.append((DEK_NAME, state.storage_dek, storage_dek_context(app)))
    return items


def export_keys(state: RuntimeState) -> ExportResult:
    """Check the migration target and write the ``Migration/...`` parameters (blocking).

    :raises NotReady: boot has not opened the secrets (503).
    :raises StateConflict: no migration in progress (409).
    :raises ExportRefused: the target key fails a check (403); nothing was written.
    """
    if (
        state.storage_dek is None
        or state.secrets is None
        or state.kms is None
        or state.attestation is None
        or state.pcr0 is None
    ):
        raise NotReady(f"export-key: the secrets are not open yet (boot stage {state.stage})")
    secrets, kms, attestation = state.secrets, state.kms, state.attestation
    key_id, target = _migration_target(state)
    log = logger.bind(key_id=key_id, pcr0=target)
    try:
        check_target_key(state, key_id, target)
    except ExportRefused as exc:
        log.bind(error=str(exc)).warning("export-key refused")
        raise
    items = _plaintexts(state)
    own = state.pcr0.lower()
    nonce = attestation.get_random(NONCE_BYTES)
    document = attestation.attestation(
        user_data=migration_binding(own, key_id, target), nonce=nonce, public_key=None
    )
    # Everything is encrypted before anything is written, so a refusal by KMS writes nothing.
    blobs = [(name, kms.encrypt(key_id, plaintext, context)) for name, plaintext, context in items]
    secrets.put(PREVIOUS_PCR0_PARAM, own)
    secrets.put(PREVIOUS_ATTESTATION_PARAM, base64.b64encode(document).decode("ascii"))
    for name, blob in blobs:  # the storage data key comes last: its presence means complete
        secrets.put(migration_param(name), base64.b64encode(blob).decode("ascii"))
    exported = [name for name, _ in blobs]
    log.bind(exported=exported).info("secrets exported to the migration key")
    return ExportResult(exported=exported, pcr0=own, new_key_id=key_id)
