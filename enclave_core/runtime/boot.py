"""Boot (DESIGN section 5): the stages from configuration to a running app.

Each stage is visible in ``/health`` while it runs. A failure leaves the runtime degraded, with a
reason that names the stage and never a secret; the runtime keeps serving ``/health`` instead of
crashing. Backends are synchronous, so every call runs in a worker thread.

Keys: the ``kms_key`` stage makes sure the KMS key is locked to this enclave's PCR0 (locking an
unlocked key on first boot with :func:`~enclave_core.kms_policy.locked_policy`), and every static
secret and the storage data key are generated and decrypted through KMS Recipient
(:class:`~enclave_core.runtime.recipient.RecipientSession`), so no plaintext key ever leaves KMS
unencrypted. There is no Recipient-less Decrypt or GenerateDataKey in the runtime.

After the last data stage, before the app starts, a migrated enclave records its chain link
(:func:`~enclave_core.runtime.chain.record_chain_link`) and schedules the deletion of the key it
was migrated from (``MigrationOldKMSKeyID``); neither can fail boot, since every secret already
opened under the new key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from enclave_core.backends import build_backend
from enclave_core.crypto.envelope import EncryptedStorage
from enclave_core.errors import AttestationError, CryptoError, EnclaveError, NotFound
from enclave_core.kms_policy import analyse, locked_policy
from enclave_core.manager import Plugins
from enclave_core.parameters import create_parameter
from enclave_core.runtime.chain import record_chain_link
from enclave_core.runtime.counting import CountingKms, CountingSecrets, CountingStorage
from enclave_core.runtime.dynsecrets import DynamicSecrets
from enclave_core.runtime.recipient import RecipientSession
from enclave_core.runtime.state import RuntimeState

KMS_KEY_PARAM = "KMSKeyID"
STORAGE_DEK_PARAM = "StorageDEK/Ciphertext"
OLD_KEY_PARAM = "MigrationOldKMSKeyID"
#: The waiting period before a migrated-from key is deleted.
OLD_KEY_DELETION_DAYS = 7
DATA_KEY_BYTES = 32
TOKEN_BYTES = 32
#: Called at the ``app`` stage to start the app supervisor (it reports readiness itself).
StartApp = Callable[[], Awaitable[None]]


def static_secret_context(app: str, secret: str) -> dict[str, str]:
    """The KMS encryption context of a static secret."""
    return {"app": app, "purpose": "static-secret", "secret": secret}


def storage_dek_context(app: str) -> dict[str, str]:
    """The KMS encryption context of the storage data key."""
    return {"app": app, "purpose": "storage-dek"}


def _build_backends(state: RuntimeState, plugins: Plugins) -> None:
    config, metrics = state.config, state.metrics
    state.attestation = build_backend(config, plugins, "attestation")
    state.kms = CountingKms(build_backend(config, plugins, "kms"), metrics)
    state.secrets = CountingSecrets(build_backend(config, plugins, "secrets"), metrics)
    state.raw_storage = build_backend(config, plugins, "storage")


def _attestation(state: RuntimeState) -> None:
    assert state.attestation is not None
    state.pcr0 = state.attestation.describe_pcr(0).data.hex()
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
    logger.bind(pcr0=state.pcr0).info("attestation ready")


def _kms_key(state: RuntimeState) -> None:
    assert state.secrets is not None and state.kms is not None
    config = state.config
    key_id = state.secrets.get(KMS_KEY_PARAM)
    if key_id is None:
        if config.mode != "development":
            raise EnclaveError(
                f"parameter {config.secrets_path}{KMS_KEY_PARAM} is absent; in production the "
                "deployment creates the enclave's KMS key"
            )
        key_id = state.kms.create_key(description=f"{config.name} enclave key").key_id
        state.secrets.put(KMS_KEY_PARAM, key_id)
        logger.bind(key_id=key_id).info("KMS key created (development)")
    info = state.kms.describe_key(key_id)
    if info.state != "Enabled":
        raise EnclaveError(f"KMS key {key_id} is {info.state}, expected Enabled")
    _check_lock(state, key_id)
    state.kms_key_id = key_id
    logger.bind(key_id=key_id).info("KMS key ready")


def _short(pcr0: str) -> str:
    return f"{pcr0[:16]}…"


def _check_lock(state: RuntimeState, key_id: str) -> None:
    """Require the key to be locked to this enclave's PCR0; lock an unlocked key (first boot)."""
    assert state.kms is not None and state.pcr0 is not None
    own = state.pcr0.lower()
    analysis = analyse(state.kms.get_key_policy(key_id), pcr0_hex=own)
    if not analysis.locked:
        policy = locked_policy(pcr0_hex=own, principal_arn=state.kms.caller_arn())
        state.kms.put_key_policy(key_id, policy, bypass_lockout_safety_check=True)
        logger.bind(key_id=key_id, pcr0=own).info("KMS key locked to this enclave's PCR0")
        analysis = analyse(state.kms.get_key_policy(key_id), pcr0_hex=own)
        if not analysis.locked:
            raise EnclaveError(f"KMS key {key_id} is still not locked after its policy was put")
    if analysis.unconditioned_decrypt:
        reason = next((r for r in analysis.reasons if "without an attestation" in r), "")
        raise EnclaveError(
            f"KMS key {key_id} policy lets a principal decrypt without attestation: {reason}"
        )
    others = sorted(analysis.attested_pcr0 - {own})
    if not analysis.attested_pcr0:
        raise EnclaveError(
            f"KMS key {key_id} is locked and lets no enclave image decrypt, not even this "
            f"enclave's PCR0 {_short(own)}"
        )
    if own not in analysis.attested_pcr0:
        raise EnclaveError(
            f"KMS key {key_id} is locked to PCR0 {', '.join(_short(p) for p in others)}, not "
            f"this enclave's PCR0 {_short(own)} (a changed image needs `enclave migrate`)"
        )
    if others:
        # Another image could decrypt every secret: the key is not this enclave's alone.
        raise EnclaveError(
            f"KMS key {key_id} also lets PCR0 {', '.join(_short(p) for p in others)} decrypt, "
            f"besides this enclave's PCR0 {_short(own)}"
        )


def _data_key(state: RuntimeState, param: str, context: dict[str, str], what: str) -> bytes:
    """Decrypt the data key stored as ``param``, or on first boot generate and store it.

    Both go through KMS Recipient: the key arrives enveloped for this boot's RSA key pair.
    """
    assert state.secrets is not None and state.kms is not None and state.kms_key_id is not None
    assert state.recipient is not None
    key_id = state.kms_key_id
    stored = state.secrets.get(param)
    if stored is None:
        blob, plaintext = state.recipient.generate_data_key(
            state.kms, key_id, context, DATA_KEY_BYTES
        )
        if create_parameter(state.secrets, param, base64.b64encode(blob).decode("ascii")):
            logger.bind(key_id=key_id, parameter=param).info("data key generated")
            return _check_length(plaintext, what)
        # Another enclave of this app stored its key first (several first boots at once):
        # ours was never used and is dropped; everyone uses the stored one.
        logger.bind(parameter=param).info("data key stored by another enclave first; using it")
        stored = state.secrets.get(param)
        if stored is None:
            raise EnclaveError(f"parameter {param} vanished while this enclave booted")
    try:
        blob = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        raise CryptoError(f"parameter {param} is not valid base64") from None
    return _check_length(state.recipient.decrypt(state.kms, key_id, blob, context), what)


def _check_length(key: bytes, what: str) -> bytes:
    if len(key) != DATA_KEY_BYTES:
        raise CryptoError(f"{what}: expected a {DATA_KEY_BYTES}-byte key, got {len(key)}")
    return key


def _static_secrets(state: RuntimeState) -> None:
    env: dict[str, str] = {}
    for secret in state.config.secrets.static:
        value = _data_key(
            state,
            f"{secret.name}/Ciphertext",
            static_secret_context(state.config.name, secret.name),
            f"static secret {secret.name!r}",
        )
        env[secret.env_var] = value.hex()
    state.static_env = env
    logger.bind(count=len(env)).info("static secrets ready")


def _storage(state: RuntimeState) -> None:
    assert state.raw_storage is not None
    dek = _data_key(
        state, STORAGE_DEK_PARAM, storage_dek_context(state.config.name), "storage data key"
    )
    state.storage_dek = dek  # export-key re-encrypts it for a migration
    storage = CountingStorage(EncryptedStorage(state.raw_storage, dek), state.metrics)
    static_vars = frozenset(s.env_var for s in state.config.secrets.static)
    state.dynamic = DynamicSecrets(storage, state.metrics, static_vars)
    state.storage = storage


def retire_old_key(state: RuntimeState) -> None:
    """Schedule deletion of the key named in ``MigrationOldKMSKeyID``, then forget the name.

    Only a key other than this enclave's own; one already pending deletion (or gone) counts as
    done. A failure is logged and the parameter kept, so the supervisor's schedule-key-deletion
    can finish the job.
    """
    assert state.secrets is not None and state.kms is not None
    old = state.secrets.get(OLD_KEY_PARAM)
    if old is None or old == state.kms_key_id:
        return
    log = logger.bind(key_id=old)
    try:
        try:
            info = state.kms.describe_key(old)
        except NotFound:
            log.warning("migrated-from KMS key no longer exists")
        else:
            if info.state != "PendingDeletion":
                state.kms.schedule_key_deletion(old, OLD_KEY_DELETION_DAYS)
                log.info("migrated-from KMS key scheduled for deletion", days=OLD_KEY_DELETION_DAYS)
        state.secrets.delete(OLD_KEY_PARAM)
    except EnclaveError as exc:
        log.bind(error=str(exc)).warning("migrated-from KMS key not scheduled for deletion")


def _after_migration(state: RuntimeState) -> None:
    record_chain_link(state)
    retire_old_key(state)


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


async def run_boot(state: RuntimeState, plugins: Plugins, start_app: StartApp | None) -> bool:
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
        await asyncio.to_thread(_after_migration, state)
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
