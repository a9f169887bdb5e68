"""The nine migration steps, resumable from ``Migration/Checkpoint``.

:class:`MigrationRunner` runs the steps after the last one the checkpoint records; each is
idempotent and writes the checkpoint before it returns, then runs the ``after_step`` hook (by
default the crash test hook of :mod:`.checkpoint`). The steps are listed in
docs/architecture.md, "A migration"; a new image that fails at step 8 is rolled back
(:mod:`.rollback`). The supervisor is trusted with nothing: every step that matters for the
secrets is checked by an enclave (docs/threat-model.md).
"""

from __future__ import annotations

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
from enclave_core.errors import EnclaveError, NotFound
from enclave_core.image.current import write_image_override
from enclave_core.image.snapshot import content_digest, prune
from enclave_core.kmspolicy.canonical import PolicyMismatch, match_policy
from enclave_core.plugin.interfaces import Kms, Secrets
from enclave_core.supervisor.migration.checkpoint import (
    CHECKPOINT_PARAM,
    KMS_KEY_PARAM,
    LINK_PARAM,
    MANIFEST_PARAM,
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
from enclave_core.supervisor.migration.rollback import (
    ROLLBACK_PREFIX,
    ImageBackup,
    RolledBack,
    roll_back,
    save_export_notes,
    save_for_rollback,
)

WAIT_POLL_S = 0.2


class EnclaveControl(Protocol):
    """What the steps need from the running enclave (the supervisor's launcher and watchdog)."""

    def create_migration_key(
        self, target_pcr0: str, migration_id: str, target_pcr8: str | None = None
    ) -> dict[str, Any]:
        """Step 2: ``POST /v1/migration-key`` on the old enclave; return its JSON answer."""
        ...

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
            except RolledBack as exc:
                self._fail(checkpoint, step, exc, status="rolled_back")
                return checkpoint
            except Exception as exc:  # noqa: BLE001 - any failure stops here, resumably
                self._fail(checkpoint, step, exc)
                return checkpoint
            self._report(checkpoint, step, checkpoint.status, msg)
            self._after_step(step)
        return checkpoint

    def _fail(
        self, checkpoint: Checkpoint, step: int, exc: Exception, *, status: str = "failed"
    ) -> None:
        error = str(exc) if isinstance(exc, EnclaveError) else f"{type(exc).__name__}: {exc}"
        checkpoint.status = status
        checkpoint.error = f"step {step} failed: {error}"
        try:
            write_checkpoint(self.secrets, checkpoint)
        except EnclaveError as write_error:
            logger.bind(error=str(write_error)).error("migration checkpoint not written")
        if not isinstance(exc, EnclaveError):
            logger.opt(exception=exc).error("migration step raised an unexpected error")
        self._report(checkpoint, step, status, checkpoint.error)

    def _report(self, checkpoint: Checkpoint, step: int, status: str, msg: str) -> None:
        log = logger.bind(step=step, total=TOTAL, status=status, migration=checkpoint.id)
        (log.error if status in ("failed", "rolled_back") else log.info)(msg)
        if self._on_progress is not None:
            self._on_progress(step, status, msg, checkpoint)

    # ------------------------------------------------------------------ steps

    def read_old_key(self, cp: Checkpoint) -> str:
        """Step 1: the current key and the image it is locked to."""
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
        try:
            params = match_policy(self.kms.get_key_policy(old))
        except (PolicyMismatch, EnclaveError):
            params = None  # only for the report: the enclaves check keys themselves
        cp.previous_pcr0 = params.pcr0 if params is not None else None
        cp.principal = params.principal if params is not None else cp.principal
        return f"current key {old} (PCR0 {_short(cp.previous_pcr0)})"

    def create_new_key(self, cp: Checkpoint) -> str:
        """Step 2: the old enclave creates the new key with its final policy (once per migration).

        The old enclave must be running and ready: it is the only one that can make a key it will
        later export to. Asked again for the same migration id and target, it answers with the
        key it created before, so a resumed migration never makes a second one.
        """
        if cp.new_key_id is not None:
            return f"new key {cp.new_key_id} (created earlier)"
        answer = self.enclave.create_migration_key(cp.target_pcr0, cp.id, cp.target_pcr8)
        key_id, until = answer.get("key_id"), answer.get("export_until")
        if not isinstance(key_id, str) or not key_id or not isinstance(until, str):
            raise EnclaveError("the old enclave's migration-key answer names no key")
        cp.new_key_id, cp.export_until = key_id, until
        logger.bind(key_id=key_id, migration=cp.id).info("migration key created by the old enclave")
        return f"new key {key_id} created by the old enclave (export window until {until})"

    def lock_new_key(self, cp: Checkpoint) -> str:
        """Step 3: the new key's policy is the canonical migration policy for the target."""
        assert cp.new_key_id is not None
        key = cp.new_key_id
        try:
            params = match_policy(self.kms.get_key_policy(key))
        except PolicyMismatch as exc:
            raise EnclaveError(f"the new key {key}: {exc}") from None
        if params.pcr0 != cp.target_pcr0 or params.export_until is None:
            raise EnclaveError(
                f"the new key {key} is not a migration key for PCR0 {_short(cp.target_pcr0)}"
            )
        return f"new key {key} locked to PCR0 {_short(cp.target_pcr0)}"

    def store_parameters(self, cp: Checkpoint) -> str:
        """Step 4: tell the old enclave (and the new one) what is migrating where."""
        assert cp.new_key_id is not None and cp.old_key_id is not None
        stale = [*self._migration_ciphertexts(), *self.secrets.list(ROLLBACK_PREFIX)]
        for name in dict.fromkeys(stale):
            self.secrets.delete(name)  # a previous, abandoned migration's
        save_export_notes(self.secrets)
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
        exported = exported if isinstance(exported, list) else []
        missing = sorted(set(migrated_names(self.config)) - set(exported))
        if missing:
            raise EnclaveError(f"the old enclave did not export {', '.join(missing)}")
        names = [str(name) for name in exported]
        return f"old enclave exported {len(names)} keys ({', '.join(names)})"

    def wait_for_ciphertexts(self, cp: Checkpoint) -> str:
        """Step 6: every migration ciphertext and the chain link are present (bounded wait)."""
        wanted = [f"{MIGRATION_PREFIX}{name}/Ciphertext" for name in migrated_names(self.config)]
        wanted.append(LINK_PARAM)
        deadline = time.monotonic() + self._export_timeout_s
        while True:
            missing = [name for name in wanted if self.secrets.get(name) is None]
            if not missing:
                return f"{len(wanted) - 1} migration ciphertexts and the chain link present"
            if time.monotonic() >= deadline:
                raise EnclaveError(
                    f"timed out after {self._export_timeout_s:g} s waiting for the old enclave's "
                    f"{', '.join(missing)}"
                )
            if self._stopping.wait(WAIT_POLL_S):
                raise EnclaveError("the supervisor is stopping; run `enclave migrate` to resume")

    def adopt(self, cp: Checkpoint) -> str:
        """Step 7: the migration ciphertexts and their link become the live ones; KMSKeyID is the
        new key. The link goes last but one: the new enclave adopts only what it names. What is
        overwritten is saved first, for a rollback at step 8."""
        assert cp.new_key_id is not None
        save_for_rollback(self.config, self.secrets)
        for name in migrated_names(self.config):
            value = self.secrets.get(f"{MIGRATION_PREFIX}{name}/Ciphertext")
            if value is None:
                raise EnclaveError(f"parameter {MIGRATION_PREFIX}{name}/Ciphertext disappeared")
            self.secrets.put(f"{name}/Ciphertext", value)
        link = self.secrets.get(LINK_PARAM)
        if link is None:
            raise EnclaveError(f"parameter {LINK_PARAM} disappeared")
        self.secrets.put(MANIFEST_PARAM, link)
        self.secrets.put(KMS_KEY_PARAM, cp.new_key_id)
        return f"{KMS_KEY_PARAM} switched to {cp.new_key_id}"

    def replace_image(self, cp: Checkpoint) -> str:
        """Step 8: the new image in place, the old enclave stopped, the new one ready.

        When the new enclave fails (a boot stage, an app that keeps failing, or no readiness in
        time) the old version is put back and started (:mod:`.rollback`) and the step
        raises :class:`RolledBack`; when even that fails, the error says what is left to do.
        """
        backup = ImageBackup(self.config, cp)
        backup.keep()
        previous = backup.kept_app_dir()  # from the copy: a resumed step 8 already installed
        where = self._install_image(cp)
        try:
            self.enclave.restart()
        except EnclaveError as exc:
            if self._stopping.is_set():
                raise  # not the image's fault: resumed by the next `enclave migrate`
            self._roll_back(cp, backup, exc)
        backup.discard()
        if cp.app_dir is not None:
            # The new snapshot and the one running until now stay; older development images go.
            prune(self.config, {Path(cp.app_dir), *([previous] if previous else [])})
        return f"new image {where} running (PCR0 {_short(cp.target_pcr0)})"

    def _install_image(self, cp: Checkpoint) -> str:
        if cp.eif is not None:
            destination = self.config.resolve(self.config.enclave.eif)
            copy_eif(Path(cp.eif), destination)
            return str(destination)
        assert cp.app_dir is not None
        digest = content_digest(self.config, Path(cp.app_dir))
        write_image_override(
            self.config, cp.app_dir, cp.target_pcr0, digest=digest, source=cp.app_source
        )
        return cp.app_dir

    def _roll_back(self, cp: Checkpoint, backup: ImageBackup, failure: EnclaveError) -> None:
        logger.bind(migration=cp.id, error=str(failure)).error(
            "the new image failed; rolling back to the previous one"
        )
        try:
            roll_back(
                self.config,
                cp,
                secrets=self.secrets,
                kms=self.kms,
                image=backup,
                restart=self.enclave.restart,
            )
        except EnclaveError as exc:
            raise EnclaveError(
                f"{failure}; the rollback to the previous image failed too: {exc}"
            ) from None
        raise RolledBack(f"{failure}; rolled back: the previous image serves again")

    def clean_up(self, cp: Checkpoint) -> str:
        """Step 9: forget the migration's parameters; the checkpoint says done."""
        leftovers = [n for n in self.secrets.list(MIGRATION_PREFIX) if n != CHECKPOINT_PARAM]
        for name in [NEW_KEY_PARAM, TARGET_PARAM, *leftovers]:
            self.secrets.delete(name)
        return "migration parameters cleaned up; migration complete"


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
