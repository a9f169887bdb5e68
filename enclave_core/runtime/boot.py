"""Boot: the stages from configuration to a running app.

``attestation``, ``kms_key``, ``static_secrets``, ``storage``, ``dynamic_secrets``, ``app``, each
visible in ``/health`` while it runs (docs/architecture.md, "Boot"). A failure leaves the runtime
degraded with a reason naming the stage, never a secret, and ``/health`` still answering.
Backends are synchronous, so every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from enclave_core.crypto.envelope import EncryptedStorage
from enclave_core.errors import (
    AccessDenied,
    AttestationError,
    EnclaveError,
    KeyRefused,
    NotFound,
)
from enclave_core.kmspolicy.canonical import EnclaveKeyPolicy, render_policy
from enclave_core.kmspolicy.keycheck import KeyPolicyRefused, KeyVerdict, verify_enclave_key
from enclave_core.plugin.backends import build_backend
from enclave_core.plugin.manager import PluginManager
from enclave_core.plugin.parameters import create_parameter
from enclave_core.runtime.attested_kms import RecipientSession
from enclave_core.runtime.chain_record import record_chain
from enclave_core.runtime.datakeys import (
    DATA_KEY_BYTES,
    DEK_NAME,
    static_secret_context,
    storage_dek_context,
)
from enclave_core.runtime.dynsecrets import DynamicSecrets
from enclave_core.runtime.instrumented import CountingKms, CountingSecrets, CountingStorage
from enclave_core.runtime.sealed import open_data_keys
from enclave_core.runtime.state import RuntimeState

__all__ = [
    "DATA_KEY_BYTES",
    "app_env_provider",
    "load_dynamic_secrets",
    "retire_old_key",
    "retire_when_serving",
    "run_boot",
    "static_secret_context",
    "storage_dek_context",
]

KMS_KEY_PARAM = "KMSKeyID"
STORAGE_DEK_PARAM = "StorageDEK/Ciphertext"
OLD_KEY_PARAM = "MigrationOldKMSKeyID"
#: The waiting period before a migrated-from key is deleted.
OLD_KEY_DELETION_DAYS = 7
TOKEN_BYTES = 32
ZERO_PCR = "0" * 96
#: Called at the ``app`` stage to start the app supervisor (it reports readiness itself).
StartApp = Callable[[], Awaitable[None]]


def _build_backends(state: RuntimeState, plugins: PluginManager) -> None:
    config, metrics = state.config, state.metrics
    state.attestation = build_backend(config, plugins, "attestation")
    state.kms = CountingKms(build_backend(config, plugins, "kms"), metrics)
    state.secrets = CountingSecrets(build_backend(config, plugins, "secrets"), metrics)
    state.raw_storage = build_backend(config, plugins, "storage")


def _attestation(state: RuntimeState) -> None:
    assert state.attestation is not None
    state.pcr0 = state.attestation.describe_pcr(0).data.hex()
    pcr8 = state.attestation.describe_pcr(8).data.hex()
    state.pcr8 = pcr8 if pcr8.strip("0") else None
    if state.pcr0 == ZERO_PCR:
        raise EnclaveError(
            "this enclave runs in debug mode (PCR0 is all zero): its memory is open to the host "
            "and no key may admit it; run it without --debug-mode"
        )
    # The response-signing key lives only in this process; its hash goes into user_data.
    state.signing_key = Ed25519PrivateKey.generate()
    state.attestation_pubkey = (
        state.signing_key.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex()
    )
    random = state.attestation.get_random(TOKEN_BYTES)
    if len(random) < TOKEN_BYTES:
        raise AttestationError(f"NSM GetRandom returned {len(random)} bytes, need {TOKEN_BYTES}")
    state.mgmt_token = random[:TOKEN_BYTES].hex()
    # A fresh Recipient key pair per boot; its document is requested when KMS is first called.
    state.recipient = RecipientSession(state.attestation, user_data=state.user_data)
    logger.bind(pcr0=state.pcr0, pcr8=state.pcr8).info("attestation ready")


def genesis_policy(state: RuntimeState) -> dict[str, object]:
    """The canonical policy of this image's first-boot key."""
    assert state.kms is not None and state.pcr0 is not None
    return render_policy(
        EnclaveKeyPolicy(principal=state.kms.caller_arn(), pcr0=state.pcr0, pcr8=state.pcr8)
    )


def _kms_key(state: RuntimeState) -> None:
    assert state.secrets is not None and state.kms is not None and state.pcr0 is not None
    config = state.config
    key_id = state.secrets.get(KMS_KEY_PARAM)
    if key_id is None:
        if config.mode != "development":
            raise EnclaveError(
                f"parameter {config.secrets_path}{KMS_KEY_PARAM} is absent; in production the "
                "deployment creates the enclave's KMS key"
            )
        created = state.kms.create_key(
            description=f"{config.name} enclave key",
            policy=genesis_policy(state),
            bypass_lockout_safety_check=True,
        ).key_id
        if not create_parameter(state.secrets, KMS_KEY_PARAM, created):
            key_id = state.secrets.get(KMS_KEY_PARAM)  # another enclave's first boot won
        key_id = key_id or created
        logger.bind(key_id=key_id).info("KMS key created, locked to this image (development)")
    state.key_verdict = _verified_key(state, key_id)
    state.kms_key_id = key_id
    logger.bind(key_id=key_id, key_origin=state.key_verdict.kind).info("KMS key verified")


def _verified_key(state: RuntimeState, key_id: str) -> KeyVerdict:
    """Verify the key; lock a key that is not locked yet (first boot), then verify again."""
    assert state.kms is not None and state.pcr0 is not None
    kms, principal, pcr0 = state.kms, state.kms.caller_arn(), state.pcr0

    def check() -> KeyVerdict:
        return verify_enclave_key(
            kms, key_id, principal=principal, pcr0=pcr0, pcr8=state.pcr8, app=state.config.name
        )

    try:
        return check()
    except KeyPolicyRefused as first:
        try:
            state.kms.put_key_policy(
                key_id, genesis_policy(state), bypass_lockout_safety_check=True
            )
        except (AccessDenied, NotFound):
            logger.bind(key_id=key_id, error=str(first)).error("KMS key refused")
            raise first from None
        logger.bind(key_id=key_id, pcr0=state.pcr0).info("KMS key locked to this image")
    try:
        return check()
    except KeyRefused as exc:
        logger.bind(key_id=key_id, error=str(exc)).error("KMS key refused")
        raise


def _static_secrets(state: RuntimeState) -> None:
    plaintexts = open_data_keys(state)
    state.static_env = {
        secret.env_var: plaintexts[secret.name].hex() for secret in state.config.secrets.static
    }
    state.storage_dek = plaintexts[DEK_NAME]  # export-key re-encrypts it for a migration
    logger.bind(count=len(state.static_env)).info("static secrets ready")


def _storage(state: RuntimeState) -> None:
    assert state.raw_storage is not None and state.storage_dek is not None
    storage = CountingStorage(EncryptedStorage(state.raw_storage, state.storage_dek), state.metrics)
    static_vars = frozenset(s.env_var for s in state.config.secrets.static)
    state.dynamic = DynamicSecrets(storage, state.metrics, static_vars)
    state.storage = storage


def retire_old_key(state: RuntimeState) -> None:
    """Schedule deletion of the key named in ``MigrationOldKMSKeyID``, then forget the name.

    Never the key in use, however it is named (id, ARN or alias): the two are compared by the ids
    KMS reports. One already pending deletion (or gone) counts as done. A failure is logged and
    the parameter kept, so the supervisor's schedule-key-deletion can finish the job.
    """
    assert state.secrets is not None and state.kms is not None and state.key_verdict is not None
    old = state.secrets.get(OLD_KEY_PARAM)
    if old is None:
        return
    log = logger.bind(key_id=old)
    try:
        try:
            info = state.kms.describe_key(old)
        except NotFound:
            log.warning("migrated-from KMS key no longer exists")
        else:
            if state.key_verdict.names(info.key_id) or state.key_verdict.names(info.arn):
                # The old enclave rebooting mid-migration, or a host naming the live key under
                # another name: either way this key stays, and so does the parameter.
                log.info("the key to retire is the key in use; it stays")
                return
            if info.state != "PendingDeletion":
                state.kms.schedule_key_deletion(old, OLD_KEY_DELETION_DAYS)
                log.info("migrated-from KMS key scheduled for deletion", days=OLD_KEY_DELETION_DAYS)
        state.secrets.delete(OLD_KEY_PARAM)
    except EnclaveError as exc:
        log.bind(error=str(exc)).warning("migrated-from KMS key not scheduled for deletion")


def retire_when_serving(state: RuntimeState) -> Callable[[], Coroutine[Any, Any, None]]:
    """What the app supervisor awaits when the app first answers: :func:`retire_old_key`.

    Not at boot: until the new version serves, the supervisor may still roll the migration back
    to the old image, which needs the old key.
    """

    async def retire() -> None:
        try:
            await asyncio.to_thread(retire_old_key, state)
        except Exception as exc:  # reported, never fatal: the app serves
            logger.bind(error=f"{type(exc).__name__}: {str(exc)[:300]}").warning(
                "migrated-from KMS key not retired"
            )

    return retire


def load_dynamic_secrets(state: RuntimeState) -> None:
    """Read every dynamic secret into ``state.dynamic_env`` (unreadable ones are skipped)."""
    assert state.dynamic is not None
    secrets, _unreadable = state.dynamic.load_all()
    env: dict[str, str] = {}
    for secret in secrets:
        if secret.env_var is None:
            continue
        if secret.env_var in state.static_env:
            logger.bind(secret=secret.name, env_var=secret.env_var).warning(
                "dynamic secret shadows a static secret's env var; skipped"
            )
            continue
        env[secret.env_var] = secret.value
    state.dynamic_env = env
    state.dynamic_secrets = len(secrets)


def app_env_provider(state: RuntimeState) -> Callable[[], Awaitable[dict[str, str]]]:
    """The secrets for each app start: static ones, and dynamic ones re-read after the first."""
    first = True

    async def provide() -> dict[str, str]:
        nonlocal first
        if not first:
            try:
                await asyncio.to_thread(load_dynamic_secrets, state)
            except EnclaveError as exc:
                logger.bind(error=str(exc)).warning("dynamic secrets not reloaded; using previous")
        first = False
        return {**state.static_env, **state.dynamic_env}

    return provide


async def run_boot(state: RuntimeState, plugins: PluginManager, start_app: StartApp | None) -> bool:
    """Run every boot stage in order; return whether boot reached the ``app`` stage.

    :param start_app: starts the app supervisor; None stops after ``dynamic_secrets`` (tests).
    """
    steps: list[tuple[str, Callable[[], None]]] = [
        ("config", lambda: _build_backends(state, plugins)),
        ("attestation", lambda: _attestation(state)),
        ("kms_key", lambda: _kms_key(state)),
        ("static_secrets", lambda: _static_secrets(state)),
        ("storage", lambda: _storage(state)),
        ("dynamic_secrets", lambda: load_dynamic_secrets(state)),
    ]
    for stage, step in steps:
        state.enter_stage(stage)
        try:
            await asyncio.to_thread(step)
        except EnclaveError as exc:
            state.fail(f"boot stage {stage} failed: {exc}")
            return False
        except Exception as exc:  # a backend bug must still leave a cause in /health
            state.fail(f"boot stage {stage} failed: {type(exc).__name__}: {str(exc)[:300]}")
            return False
    try:
        await asyncio.to_thread(record_chain, state)
    except Exception as exc:  # reported, never fatal: every secret already opened
        logger.bind(error=f"{type(exc).__name__}: {str(exc)[:300]}").warning(
            "migration follow-up failed"
        )
    state.enter_stage("app")
    if start_app is not None:
        try:
            await start_app()
        except EnclaveError as exc:
            state.fail(f"boot stage app failed: {exc}")
            return False
    return True
