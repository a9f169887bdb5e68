"""The nine migration steps of DESIGN section 7, resumable from ``Migration/Checkpoint``.

:class:`MigrationRunner` runs the steps after the last one the checkpoint records. Each step is
idempotent (a crash may happen after its work and before its checkpoint) and writes the
checkpoint before it returns, then logs ``step``, ``total``, ``status`` and ``msg``:

1. read ``KMSKeyID`` (the old key), the enclave principal and the old PCR0 from its policy;
2. create the new key with its final policy (:func:`~enclave_core.kms_policy.
   migration_target_policy`) in the one CreateKey call, so the key is never open; or reuse the
   one the checkpoint names (or, after a crash between the create and the checkpoint, the one
   whose description carries this migration's id). The host's IAM role needs only
   ``kms:CreateKey`` for this, no ``kms:PutKeyPolicy``. A backend whose ``create_key`` takes no
   policy gets create, then PutKeyPolicy;
3. check that the final policy is in place (put it in one call if a backend created the key
   without it);
4. store ``MigrationKMSKeyID``, ``MigrationOldKMSKeyID``, ``MigrationTargetPCR0``;
5. ask the old enclave to export (``POST /v1/export-key`` on its control listener);
6. wait for every ``Migration/{secret}/Ciphertext`` and ``Migration/StorageDEK/Ciphertext``;
7. copy them over the live ciphertexts and switch ``KMSKeyID`` to the new key;
8. put the new image in place, stop the old enclave, start the new one, wait until it is ready;
9. delete ``MigrationKMSKeyID``, ``MigrationTargetPCR0`` and the migration ciphertexts (the new
   enclave consumes ``MigrationOldKMSKeyID`` and ``MigrationPreviousPCR0*`` itself).

After each step's checkpoint the ``after_step`` hook runs: by default the crash test hook of
:mod:`.migration_checkpoint` (``ENCLAVE_MIGRATION_CRASH_AFTER_STEP``).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from loguru import logger

from enclave_core.config import Config
from enclave_core.errors import AccessDenied, EnclaveError, NotFound
from enclave_core.image import write_image_override
from enclave_core.interfaces import Kms, Secrets
from enclave_core.kms_conditions import as_list
from enclave_core.kms_policy import analyse, migration_target_policy
from enclave_core.supervisor.migration_checkpoint import (
    KMS_KEY_PARAM,
    MIGRATION_PREFIX,
    NEW_KEY_PARAM,
    OLD_KEY_PARAM,
    TARGET_PARAM,
    TOTAL,
    Checkpoint,
    crash_hook_from_env,
    migrated_names,
    write_checkpoint,
)

WAIT_POLL_S = 0.2


class EnclaveControl(Protocol):
    """What the steps need from the running enclave (the supervisor's launcher and watchdog)."""

    def export_key(self) -> dict[str, Any]:
        """Step 5: ``POST /v1/export-key`` on the old enclave; return its JSON answer."""
        ...

    def restart(self) -> None:
        """Step 8: stop the old enclave, start the new one, return once it is ready."""
        ...


def _short(pcr0: str | None) -> str:
    return f"{pcr0[:16]}…" if pcr0 else "?"


class MigrationRunner:
    """Runs a migration's remaining steps against the configured backends."""

    def __init__(
        self,
        config: Config,
        *,
        kms: Kms,
        secrets: Secrets,
        enclave: EnclaveControl,
        after_step: Callable[[int], None] = crash_hook_from_env,
        on_progress: Callable[[int, str, str, Checkpoint], None] | None = None,
        export_timeout_s: float = 60.0,
        stopping: threading.Event | None = None,
    ) -> None:
        """:param after_step: called after each step's checkpoint (the crash test hook).
        :param on_progress: receives ``(step, status, msg, checkpoint)`` after each step.
        :param export_timeout_s: how long step 6 waits for the migration ciphertexts.
        :param stopping: set when the supervisor stops; waits end early (resumable later)."""
        self.config = config
        self.kms = kms
        self.secrets = secrets
        self.enclave = enclave
        self._after_step = after_step
        self._on_progress = on_progress
        self._export_timeout_s = export_timeout_s
        self._stopping = stopping or threading.Event()
        self._steps: dict[int, Callable[[Checkpoint], str]] = {
            1: self.read_old_key,
            2: self.create_new_key,
            3: self.lock_new_key,
            4: self.store_parameters,
            5: self.export,
            6: self.wait_for_ciphertexts,
            7: self.adopt,
            8: self.replace_image,
            9: self.clean_up,
        }

    def run(self, checkpoint: Checkpoint) -> Checkpoint:
        """Run every step after ``checkpoint.step``; return the final checkpoint.

        A failing step marks the checkpoint ``failed`` (with the error) and stops; running again
        resumes at that step. Exceptions of the ``after_step`` hook propagate unchanged.
        """
        for step in range(checkpoint.step + 1, TOTAL + 1):
            try:
                msg = self._steps[step](checkpoint)
                checkpoint.step = step
                checkpoint.status = "done" if step == TOTAL else "running"
                checkpoint.error = None
                write_checkpoint(self.secrets, checkpoint)
            except Exception as exc:  # noqa: BLE001 - any failure stops here, resumably
                self._fail(checkpoint, step, exc)
                return checkpoint
            self._report(checkpoint, step, checkpoint.status, msg)
            self._after_step(step)
        return checkpoint

    def _fail(self, checkpoint: Checkpoint, step: int, exc: Exception) -> None:
        error = str(exc) if isinstance(exc, EnclaveError) else f"{type(exc).__name__}: {exc}"
        checkpoint.status = "failed"
        checkpoint.error = f"step {step} failed: {error}"
        try:
            write_checkpoint(self.secrets, checkpoint)
        except EnclaveError as write_error:
            logger.bind(error=str(write_error)).error("migration checkpoint not written")
        if not isinstance(exc, EnclaveError):
            logger.opt(exception=exc).error("migration step raised an unexpected error")
        self._report(checkpoint, step, "failed", checkpoint.error)

    def _report(self, checkpoint: Checkpoint, step: int, status: str, msg: str) -> None:
        log = logger.bind(step=step, total=TOTAL, status=status, migration=checkpoint.id)
        (log.error if status == "failed" else log.info)(msg)
        if self._on_progress is not None:
            self._on_progress(step, status, msg, checkpoint)

    # ------------------------------------------------------------------ steps

    def read_old_key(self, cp: Checkpoint) -> str:
        """Step 1: the current key, the enclave principal and the old PCR0."""
        old = self.secrets.get(KMS_KEY_PARAM)
        if old is None:
            raise EnclaveError(
                f"parameter {self.config.secrets_path}{KMS_KEY_PARAM} is absent: the enclave has "
                "never booted, there is nothing to migrate"
            )
        info = self.kms.describe_key(old)
        if info.state != "Enabled":
            raise EnclaveError(f"the current KMS key {old} is {info.state}, expected Enabled")
        cp.old_key_id = old
        policy: dict[str, Any] | None
        try:
            policy = self.kms.get_key_policy(old)
        except AccessDenied:
            policy = None
        if policy is not None:
            attested = sorted(analyse(policy).attested_pcr0)
            cp.previous_pcr0 = attested[0] if len(attested) == 1 else None
        cp.principal = cp.principal or _enclave_principal(policy)
        if cp.principal is None:
            if self.config.mode != "development":
                # Guessing wrong would lock the secrets to a key the new enclave cannot use.
                raise EnclaveError(
                    f"cannot tell the enclave's IAM role from key {old}'s policy; pass "
                    "--enclave-principal <role-arn>"
                )
            cp.principal = self.kms.caller_arn()
        return f"current key {old} (PCR0 {_short(cp.previous_pcr0)})"

    def create_new_key(self, cp: Checkpoint) -> str:
        """Step 2: create the new key once, whatever crashes happen, with its final policy.

        The policy goes in the CreateKey call (with the lockout-safety bypass: nobody may change
        it), so no moment exists where the key is open, and the host role needs no
        ``kms:PutKeyPolicy``. A backend whose ``create_key`` lacks ``policy`` or
        ``bypass_lockout_safety_check`` gets create, then put (the key id is in the checkpoint
        even when the put fails, so a rerun reuses the key and step 3 puts the policy).
        """
        if cp.new_key_id is not None:
            return f"new key {cp.new_key_id} (created earlier)"
        found = self._find_key(cp.key_description)
        if found is not None:
            cp.new_key_id = found
            return f"new key {found} (found by its description after a crash)"
        wanted = self._target_policy(cp)
        if creates_with_policy(self.kms):
            cp.new_key_id = self.kms.create_key(
                description=cp.key_description, policy=wanted, bypass_lockout_safety_check=True
            ).key_id
            logger.bind(key_id=cp.new_key_id, migration=cp.id).info("migration key created")
        else:
            cp.new_key_id = self.kms.create_key(description=cp.key_description).key_id
            logger.bind(key_id=cp.new_key_id, migration=cp.id).info("migration key created")
            self.kms.put_key_policy(cp.new_key_id, wanted, bypass_lockout_safety_check=True)
            logger.bind(key_id=cp.new_key_id, pcr0=cp.target_pcr0).info("migration key policy put")
        return f"new key {cp.new_key_id} created"

    def _target_policy(self, cp: Checkpoint) -> dict[str, Any]:
        """The new key's final policy (the same document in steps 2 and 3)."""
        assert cp.principal is not None
        return migration_target_policy(
            pcr0_hex=cp.target_pcr0,
            principal_arn=cp.principal,
            app=self.config.name,
            host_arn=self.kms.caller_arn(),
        )

    def _find_key(self, description: str) -> str | None:
        """The key with this description, when the backend can list its keys (local KMS).

        Without a listing (AWS), a crash between CreateKey and the checkpoint write leaves one
        unused key behind, which the next attempt does not reuse: that window is a few ms, and
        the key is locked from creation and holds no ciphertext.
        """
        lister = getattr(self.kms, "key_ids", None)
        if not callable(lister):
            return None
        for key_id in lister():
            try:
                info = self.kms.describe_key(key_id)
            except EnclaveError:
                continue  # not ours to read
            if info.description == description and info.state == "Enabled":
                return str(info.key_id)
        return None

    def lock_new_key(self, cp: Checkpoint) -> str:
        """Step 3: verify the final policy; put it in one PutKeyPolicy only if it is missing
        (step 2 normally created the key with it)."""
        assert cp.new_key_id is not None and cp.principal is not None
        key = cp.new_key_id
        if self._policy_in_place(key, cp.target_pcr0) is None:
            self.kms.put_key_policy(key, self._target_policy(cp), bypass_lockout_safety_check=True)
            logger.bind(key_id=key, pcr0=cp.target_pcr0).info("migration key policy put")
        problem = self._policy_in_place(key, cp.target_pcr0)
        if problem:
            raise EnclaveError(f"the new key {key}'s policy is not locked: {problem}")
        return f"new key {key} locked to PCR0 {_short(cp.target_pcr0)}"

    def _policy_in_place(self, key: str, target: str) -> str | None:
        """None when the key's policy still needs putting; "" when locked to ``target``, else
        why not (after a put, a reason means the policy did not take)."""
        policy = self.kms.get_key_policy(key)
        analysis = analyse(policy, pcr0_hex=target)
        if analysis.locked and not analysis.unconditioned_decrypt:
            if analysis.attested_pcr0 == {target}:
                return ""
            return "; ".join(analysis.reasons) or "it admits other images"
        return None

    def store_parameters(self, cp: Checkpoint) -> str:
        """Step 4: tell the old enclave (and the new one) what is migrating where."""
        assert cp.new_key_id is not None and cp.old_key_id is not None
        for stale in self._migration_ciphertexts():
            self.secrets.delete(stale)  # a previous, abandoned migration's
        previous_old = self.secrets.get(OLD_KEY_PARAM)
        if previous_old not in (None, cp.old_key_id):
            logger.bind(key_id=previous_old).warning(
                "an earlier migration's old key was never retired; schedule its deletion by hand"
            )
        self.secrets.put(NEW_KEY_PARAM, cp.new_key_id)
        self.secrets.put(OLD_KEY_PARAM, cp.old_key_id)
        self.secrets.put(TARGET_PARAM, cp.target_pcr0)
        return f"migration parameters stored ({NEW_KEY_PARAM}, {OLD_KEY_PARAM}, {TARGET_PARAM})"

    def _migration_ciphertexts(self) -> list[str]:
        return [
            name for name in self.secrets.list(MIGRATION_PREFIX) if name.endswith("/Ciphertext")
        ]

    def export(self, cp: Checkpoint) -> str:
        """Step 5: the old enclave re-encrypts its secrets under the new key."""
        answer = self.enclave.export_key()
        exported = answer.get("exported")
        missing = sorted(set(migrated_names(self.config)) - set(as_list(exported)))
        if missing:
            raise EnclaveError(f"the old enclave did not export {', '.join(missing)}")
        names = [str(name) for name in as_list(exported)]
        return f"old enclave exported {len(names)} keys ({', '.join(names)})"

    def wait_for_ciphertexts(self, cp: Checkpoint) -> str:
        """Step 6: every migration ciphertext is present (bounded wait)."""
        wanted = [f"{MIGRATION_PREFIX}{name}/Ciphertext" for name in migrated_names(self.config)]
        deadline = time.monotonic() + self._export_timeout_s
        while True:
            missing = [name for name in wanted if self.secrets.get(name) is None]
            if not missing:
                return f"{len(wanted)} migration ciphertexts present"
            if time.monotonic() >= deadline:
                raise EnclaveError(
                    f"timed out after {self._export_timeout_s:g} s waiting for the old enclave's "
                    f"{', '.join(missing)}"
                )
            if self._stopping.wait(WAIT_POLL_S):
                raise EnclaveError("the supervisor is stopping; run `enclave migrate` to resume")

    def adopt(self, cp: Checkpoint) -> str:
        """Step 7: the migration ciphertexts become the live ones; KMSKeyID is the new key."""
        assert cp.new_key_id is not None
        for name in migrated_names(self.config):
            value = self.secrets.get(f"{MIGRATION_PREFIX}{name}/Ciphertext")
            if value is None:
                raise EnclaveError(f"parameter {MIGRATION_PREFIX}{name}/Ciphertext disappeared")
            self.secrets.put(f"{name}/Ciphertext", value)
        self.secrets.put(KMS_KEY_PARAM, cp.new_key_id)
        return f"{KMS_KEY_PARAM} switched to {cp.new_key_id}"

    def replace_image(self, cp: Checkpoint) -> str:
        """Step 8: the new image in place, the old enclave stopped, the new one ready."""
        if cp.eif is not None:
            destination = self.config.resolve(self.config.enclave.eif)
            copy_eif(Path(cp.eif), destination)
            where = str(destination)
        else:
            assert cp.app_dir is not None
            write_image_override(self.config, cp.app_dir, cp.target_pcr0)
            where = cp.app_dir
        self.enclave.restart()
        return f"new image {where} running (PCR0 {_short(cp.target_pcr0)})"

    def clean_up(self, cp: Checkpoint) -> str:
        """Step 9: forget the migration's parameters; the checkpoint says done."""
        for name in [NEW_KEY_PARAM, TARGET_PARAM, *self._migration_ciphertexts()]:
            self.secrets.delete(name)
        return "migration parameters cleaned up; migration complete"


def creates_with_policy(kms: Kms) -> bool:
    """Whether ``kms.create_key`` takes ``policy`` and ``bypass_lockout_safety_check``.

    Third-party backends written against the older Protocol may lack them; they are told apart
    by their signature, never by calling and catching a TypeError from inside the call.
    """
    try:
        parameters = inspect.signature(kms.create_key).parameters
    except (TypeError, ValueError):  # no introspectable signature (a C callable)
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True  # takes any keyword, as a forwarding wrapper does
    return all(
        name in parameters
        and parameters[name].kind
        in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for name in ("policy", "bypass_lockout_safety_check")
    )


def _enclave_principal(policy: dict[str, Any] | None) -> str | None:
    """The principal a locked key policy lets decrypt under attestation (the enclave's role)."""
    if policy is None:
        return None
    for statement in as_list(policy.get("Statement")):
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue
        if "RecipientAttestation" not in json.dumps(statement.get("Condition", {})):
            continue
        principal = statement.get("Principal")
        names = as_list(principal.get("AWS")) if isinstance(principal, dict) else []
        if len(names) == 1 and isinstance(names[0], str) and names[0] != "*":
            return names[0]
    return None


def copy_eif(source: Path, destination: Path) -> None:
    """Copy the new EIF over ``enclave.eif`` atomically (nothing to do if it is already there)."""
    if not source.is_file():
        raise NotFound(f"new image {source} is not a file")
    if destination.exists() and source.resolve() == destination.resolve():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=".eif-", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
