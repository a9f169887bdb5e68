"""export-key: re-encrypt this enclave's data keys for its successor, and only for its successor.

:func:`export_keys` refuses (403, naming why) unless the key named by ``MigrationKMSKeyID`` is
the one this image created for that target (``Migration/KeyRecord``,
:mod:`enclave_core.runtime.migration_key`), still passes every check and its export window is
open. It then writes ``Migration/{name}/Ciphertext`` and, last, the chain link
``Migration/Manifest`` (docs/protocols.md, "The migration chain"). Exporting again for the same
migration rewrites the same parameters.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from loguru import logger

from enclave_core.crypto.attested_record import make_record, record_digest, store_record
from enclave_core.errors import (
    KeyRefused,
    StateConflict,
    TamperingDetected,
    ValidationError,
)
from enclave_core.pcrs import normalise_pcr
from enclave_core.runtime.datakeys import data_keys
from enclave_core.runtime.manifest import blob_digest
from enclave_core.runtime.migration_key import (
    MigrationRefused,
    NotReady,
    read_key_record,
    require_ready,
    trusted_now,
    verify_migration_key,
)
from enclave_core.runtime.state import RuntimeState

__all__ = ["ExportRefused", "ExportResult", "NotReady", "export_keys", "migration_param"]

NEW_KEY_PARAM = "MigrationKMSKeyID"
TARGET_PCR0_PARAM = "MigrationTargetPCR0"
LINK_PARAM = "Migration/Manifest"
PREVIOUS_PCR0_PARAM = "MigrationPreviousPCR0"
PREVIOUS_ATTESTATION_PARAM = "MigrationPreviousPCR0Attestation"
MIGRATION_PREFIX = "Migration/"
NO_MIGRATION = "no migration in progress"
#: An export refused for any of these reasons is a 403 "Export refused".
ExportRefused = MigrationRefused


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote: the names exported, this enclave's PCR0, the new key, the link."""

    exported: list[str]
    pcr0: str
    new_key_id: str
    link: str

    def as_json(self) -> dict[str, Any]:
        """The 200 body of ``POST /v1/export-key``."""
        return {
            "exported": list(self.exported),
            "pcr0": self.pcr0,
            "new_key_id": self.new_key_id,
            "link": self.link,
        }


def migration_param(name: str) -> str:
    """The parameter holding the migrated ciphertext of ``name`` (a secret or ``StorageDEK``)."""
    return f"{MIGRATION_PREFIX}{name}/Ciphertext"


def _migration_target(state: RuntimeState) -> tuple[str, str]:
    assert state.secrets is not None
    key_id = state.secrets.get(NEW_KEY_PARAM)
    target = state.secrets.get(TARGET_PCR0_PARAM)
    if not key_id or not target:
        raise StateConflict(NO_MIGRATION)
    try:
        return key_id, normalise_pcr(target, TARGET_PCR0_PARAM)
    except ValidationError as exc:
        raise ExportRefused(str(exc)) from None


def _refuse(reason: str) -> ExportRefused:
    logger.bind(error=reason).error("export-key refused")
    return ExportRefused(reason)


def _plaintexts(state: RuntimeState) -> list[tuple[str, bytes, dict[str, str]]]:
    """(name, key, context) of every data key, from memory."""
    assert state.storage_dek is not None
    items = []
    for key in data_keys(state.config):
        if key.name == "StorageDEK":
            items.append((key.name, state.storage_dek, key.context))
            continue
        env_var = next(s.env_var for s in state.config.secrets.static if s.name == key.name)
        value = state.static_env.get(env_var)
        if value is None:
            raise NotReady(f"{key.what} is not open in this enclave")
        items.append((key.name, bytes.fromhex(value), key.context))
    return items


def export_keys(state: RuntimeState) -> ExportResult:
    """Check the migration key and write the ``Migration/...`` parameters (blocking).

    :raises NotReady: boot has not opened the secrets (503).
    :raises StateConflict: no migration in progress (409).
    :raises ExportRefused: the target key fails a check (403); nothing was written.
    """
    require_ready(state, "export-key")
    assert state.secrets is not None and state.kms is not None and state.attestation is not None
    assert state.manifest is not None and state.pcr0 is not None
    secrets, kms = state.secrets, state.kms
    key_id, target = _migration_target(state)
    where = f"target key {key_id}"
    try:
        record = read_key_record(state)
    except TamperingDetected as exc:
        raise _refuse(f"{where}: {exc}") from None
    if record is None or key_id not in (record.key_id, record.key_arn):
        raise _refuse(
            f"{where} was not created by this enclave: the old enclave exports only to a key it "
            "created itself (POST /v1/migration-key)"
        )
    if record.target_pcr0 != target:
        raise _refuse(
            f"{where} was created for PCR0 {record.target_pcr0[:16]}…, not the target "
            f"{target[:16]}… named in {TARGET_PCR0_PARAM}"
        )
    try:
        verdict = verify_migration_key(state, record)
    except KeyRefused as exc:
        raise _refuse(str(exc)) from None
    if trusted_now(state) >= record.export_until:
        raise _refuse(
            f"{where}: its export window closed at {record.export_until.isoformat()}; run "
            "`enclave migrate` again to start over with a new key"
        )
    items = _plaintexts(state)
    # Everything is encrypted before anything is written, so a refusal by KMS writes nothing.
    blobs = [(name, kms.encrypt(verdict.key_id, plain, context)) for name, plain, context in items]
    manifest = state.manifest
    body = {
        "app": state.config.name,
        "migration": record.migration,
        "index": manifest.chain_length + 1,
        "previous_link": manifest.last_link,
        "from_pcr0": state.pcr0,
        "from_pcr8": state.pcr8,
        "to_pcr0": target,
        "to_pcr8": record.target_pcr8,
        "key_id": verdict.key_id,
        "key_arn": verdict.arn,
        "policy_sha256": verdict.policy_sha256,
        "entries": {name: blob_digest(blob) for name, blob in blobs},
    }
    link = make_record(state.attestation, "link", body)
    for name, blob in blobs:
        secrets.put(migration_param(name), base64.b64encode(blob).decode("ascii"))
    secrets.put(PREVIOUS_PCR0_PARAM, state.pcr0)
    secrets.put(PREVIOUS_ATTESTATION_PARAM, link["attestation"])
    store_record(secrets, LINK_PARAM, link)  # last: its presence means the export is complete
    exported = [name for name, _ in blobs]
    logger.bind(key_id=verdict.key_id, pcr0=target, exported=exported).info(
        "secrets exported to the migration key"
    )
    return ExportResult(
        exported=exported,
        pcr0=state.pcr0,
        new_key_id=verdict.key_id,
        link=record_digest(link),
    )
