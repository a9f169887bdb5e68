"""The migration key: created by the old enclave itself, for its successor only.

``POST /v1/migration-key`` (control listener) is step 2 of a migration: over its own TLS session
to KMS the old enclave creates the key with its final canonical policy in the CreateKey call
(decrypt only for the target PCR0, and this image's PCR8 when signed; ``Encrypt`` only during the
``EXPORT_WINDOW_S`` export window; no policy change, no grants), verifies it like any key and
stores an attested ``migration-key`` record. Asked again for the same migration and target, it
returns the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger

from enclave_core.crypto import cose
from enclave_core.crypto.attested_record import make_record, read_record, store_record
from enclave_core.errors import (
    AccessDenied,
    AttestationError,
    EnclaveError,
    KeyRefused,
    StateConflict,
    TamperingDetected,
    ValidationError,
)
from enclave_core.kmspolicy.canonical import (
    EnclaveKeyPolicy,
    format_deadline,
    parse_deadline,
    render_policy,
)
from enclave_core.kmspolicy.keycheck import KeyVerdict, verify_enclave_key
from enclave_core.pcrs import is_all_zero, normalise_pcr
from enclave_core.runtime.state import RuntimeState
from enclave_core.runtime.trust import root_of

KEY_RECORD_PARAM = "Migration/KeyRecord"
#: How long the old enclave may encrypt under the key it made: long enough for the export,
#: short enough that the live key carries no standing Encrypt.
EXPORT_WINDOW_S = 3600
_MIGRATION_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class MigrationRefused(AccessDenied):
    """The enclave will not make (or export to) a key for this target: the reason says why."""

    title = "Migration refused"


class NotReady(EnclaveError):
    """Boot has not opened the secrets yet, so there is nothing to hand over (503)."""

    http_status = 503
    title = "Not ready"


@dataclass(frozen=True)
class MigrationKey:
    """A key this enclave created for a migration, as its attested record says."""

    key_id: str
    key_arn: str
    target_pcr0: str
    target_pcr8: str | None
    export_until: datetime
    policy_sha256: str
    migration: str

    def as_json(self) -> dict[str, Any]:
        """The 200 body of ``POST /v1/migration-key``."""
        return {
            "key_id": self.key_id,
            "key_arn": self.key_arn,
            "target_pcr0": self.target_pcr0,
            "target_pcr8": self.target_pcr8,
            "export_until": format_deadline(self.export_until),
            "migration": self.migration,
        }


def require_ready(state: RuntimeState, what: str) -> None:
    """NotReady unless boot has verified the key and opened every data key."""
    if (
        state.storage_dek is None
        or state.manifest is None
        or state.key_verdict is None
        or state.secrets is None
        or state.kms is None
        or state.attestation is None
        or state.pcr0 is None
    ):
        raise NotReady(f"{what}: the secrets are not open yet (boot stage {state.stage})")


def trusted_now(state: RuntimeState) -> datetime:
    """The time by the NSM: the timestamp of a fresh document (the host sets no clock there)."""
    assert state.attestation is not None
    document = state.attestation.attestation(user_data=None, nonce=None, public_key=None)
    try:
        payload = cose.decode_document(cose.decode_sign1(document).payload)
    except AttestationError as exc:
        raise EnclaveError(f"the NSM's document cannot be read for the time: {exc}") from None
    return datetime.fromtimestamp(payload["timestamp"] / 1000, tz=UTC)


def _target_pcr8(state: RuntimeState, announced: str | None) -> str | None:
    """The PCR8 the key pins: this image's when it is signed, whatever the host announces."""
    if announced is not None:
        # All zero is what an unsigned image reports: no signature announced.
        announced = None if is_all_zero(announced) else normalise_pcr(announced, "target_pcr8")
    if state.pcr8 is None:
        return None
    if announced is not None and announced != state.pcr8:
        raise MigrationRefused(
            f"the new image is signed with another certificate (PCR8 {announced[:16]}…) than "
            f"this one ({state.pcr8[:16]}…): only images signed by the same owner receive the "
            "secrets"
        )
    return state.pcr8


def read_key_record(state: RuntimeState) -> MigrationKey | None:
    """The migration key this image recorded, verified; None when there is none.

    :raises TamperingDetected: a record that does not verify, or that another image made.
    """
    assert state.secrets is not None
    record = read_record(state.secrets, KEY_RECORD_PARAM, "migration-key", root=root_of(state))
    if record is None:
        return None
    body = record.body
    if record.pcr0 != state.pcr0 or body.get("by_pcr0") != state.pcr0:
        raise TamperingDetected(f"{KEY_RECORD_PARAM} was made by another image")
    if body.get("app") != state.config.name:
        raise TamperingDetected(f"{KEY_RECORD_PARAM} is for another app")
    try:
        return MigrationKey(
            key_id=str(body["key_id"]),
            key_arn=str(body["key_arn"]),
            target_pcr0=str(body["target_pcr0"]),
            target_pcr8=body["target_pcr8"],
            export_until=parse_deadline(str(body["export_until"])),
            policy_sha256=str(body["policy_sha256"]),
            migration=str(body["migration"]),
        )
    except (KeyError, EnclaveError) as exc:
        raise TamperingDetected(f"{KEY_RECORD_PARAM}: its body is incomplete ({exc})") from None


def verify_migration_key(state: RuntimeState, key: MigrationKey) -> KeyVerdict:
    """The key a record names must still be exactly what was created (KeyRefused if not)."""
    assert state.kms is not None
    verdict = verify_enclave_key(
        state.kms,
        key.key_id,
        principal=state.kms.caller_arn(),
        pcr0=key.target_pcr0,
        pcr8=key.target_pcr8,
        app=state.config.name,
    )
    if (
        verdict.policy_sha256 != key.policy_sha256
        or verdict.policy.export_until != key.export_until
        or verdict.policy.pcr8 != key.target_pcr8
    ):
        raise KeyRefused(f"KMS key {key.key_id}: its policy is not the one this enclave created")
    return verdict


def _check_migration_id(migration: Any) -> str:
    if (
        not isinstance(migration, str)
        or not 1 <= len(migration) <= 64
        or not set(migration) <= _MIGRATION_ID_CHARS
    ):
        raise ValidationError("'migration_id' must be 1 to 64 characters of a-z, 0-9 and '-'")
    return migration


def create_migration_key(
    state: RuntimeState,
    *,
    target_pcr0: str,
    migration_id: str,
    target_pcr8: str | None = None,
    now: datetime | None = None,
) -> MigrationKey:
    """Create (or find again) the key for migrating to ``target_pcr0``; blocking.

    :param now: the time the export window starts (tests); default the NSM's clock.
    :raises NotReady: boot has not finished (503).
    :raises ValidationError: a malformed or all-zero target (400).
    :raises MigrationRefused: the target is signed by another certificate (403).
    """
    require_ready(state, "migration-key")
    assert state.kms is not None and state.secrets is not None and state.attestation is not None
    target = normalise_pcr(target_pcr0, "target_pcr0")
    migration = _check_migration_id(migration_id)
    pcr8 = _target_pcr8(state, target_pcr8)
    try:
        existing = read_key_record(state)
    except TamperingDetected as exc:  # another image's, or a forgery: replaced below
        logger.bind(error=str(exc)).warning("a migration key record is ignored")
        existing = None
    if existing is not None and (existing.migration, existing.target_pcr0) == (migration, target):
        try:
            verify_migration_key(state, existing)
            return existing
        except KeyRefused as exc:
            raise StateConflict(
                f"the key {existing.key_id} made for migration {migration} is no longer usable: "
                f"{exc}; start the migration anew"
            ) from None
    start = now or trusted_now(state)
    until = (start + timedelta(seconds=EXPORT_WINDOW_S)).replace(microsecond=0)
    params = EnclaveKeyPolicy(
        principal=state.kms.caller_arn(),
        pcr0=target,
        pcr8=pcr8,
        app=state.config.name,
        export_until=until,
    )
    info = state.kms.create_key(
        description=f"simple-enclave {state.config.name} migration {migration}",
        policy=render_policy(params),
        bypass_lockout_safety_check=True,
    )
    log = logger.bind(key_id=info.key_id, pcr0=target, migration=migration)
    log.info("migration key created by the old enclave")
    verdict = verify_enclave_key(
        state.kms,
        info.key_id,
        principal=params.principal,
        pcr0=target,
        pcr8=pcr8,
        app=state.config.name,
    )
    key = MigrationKey(
        key_id=verdict.key_id,
        key_arn=verdict.arn,
        target_pcr0=target,
        target_pcr8=pcr8,
        export_until=until,
        policy_sha256=verdict.policy_sha256,
        migration=migration,
    )
    body = {
        "app": state.config.name,
        "migration": migration,
        "by_pcr0": state.pcr0,
        "key_id": verdict.key_id,
        "key_arn": verdict.arn,
        "target_pcr0": target,
        "target_pcr8": pcr8,
        "export_until": format_deadline(until),
        "policy_sha256": verdict.policy_sha256,
    }
    store_record(
        state.secrets, KEY_RECORD_PARAM, make_record(state.attestation, "migration-key", body)
    )
    log.info("migration key recorded")
    return key
