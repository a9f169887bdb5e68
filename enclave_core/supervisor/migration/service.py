"""The supervisor's side of a migration (README: Migration): one at a time, resumable, observable.

:class:`MigrationService` answers ``POST /v1/migrate`` (a new migration, the resumption of an
unfinished one with the same target, or a no-op), ``GET /v1/migrate`` and
``POST /v1/schedule-key-deletion``, and runs the steps of :mod:`.steps` in a worker thread. It
refuses, with the reason, a second migration (409), a ``--pcr0`` the new image does not measure
(400), an unfinished migration to another image (409) and a checkpoint whose new key is gone (409).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from enclave_core.config import Config
from enclave_core.errors import (
    EnclaveError,
    NotFound,
    StateConflict,
    ValidationError,
)
from enclave_core.image.current import measure_new_image
from enclave_core.image.snapshot import take_snapshot
from enclave_core.kmspolicy.canonical import parse_deadline
from enclave_core.pcrs import normalise_pcr
from enclave_core.plugin.interfaces import KeyInfo, Kms, Secrets
from enclave_core.supervisor.migration.checkpoint import (
    KMS_KEY_PARAM,
    OLD_KEY_PARAM,
    TOTAL,
    Checkpoint,
    crash_hook_from_env,
    read_checkpoint,
    write_checkpoint,
)
from enclave_core.supervisor.migration.enclave import SupervisorEnclave
from enclave_core.supervisor.migration.steps import MigrationRunner

__all__ = ["ALREADY_COMPLETE", "MigrationService", "SupervisorEnclave", "parse_request"]

ALREADY_COMPLETE = "migration already complete"
Backends = Callable[[], tuple[Kms, Secrets]]
Measure = Callable[..., str]


def parse_request(body: Any) -> dict[str, str | None]:
    """Validate ``{"eif": path} | {"app_dir": path}`` plus an optional ``"pcr0"``."""
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object {'eif' or 'app_dir', 'pcr0'?}")
    unknown = sorted(set(body) - {"eif", "app_dir", "pcr0"})
    if unknown:
        raise ValidationError(f"unknown field(s) {', '.join(unknown)}")
    values = {k: body.get(k) for k in ("eif", "app_dir", "pcr0")}
    for name, value in values.items():
        if value is not None and (not isinstance(value, str) or not value):
            raise ValidationError(f"'{name}' must be a non-empty string")
    if (values["eif"] is None) == (values["app_dir"] is None):
        raise ValidationError("name the new image with exactly one of 'eif' and 'app_dir'")
    for name in ("eif", "app_dir"):
        if values[name] is not None and not Path(str(values[name])).is_absolute():
            raise ValidationError(f"'{name}' must be an absolute path")
    if values["pcr0"] is not None:  # malformed, or the all-zero PCR0 of a debug-mode enclave
        values["pcr0"] = normalise_pcr(str(values["pcr0"]), "'pcr0'")
    return values


class MigrationService:
    """Starts, resumes and reports migrations; at most one runs at a time."""

    def __init__(
        self,
        config: Config,
        *,
        backends: Backends,
        enclave_factory: Callable[[], Any],
        measure: Measure = measure_new_image,
        after_step: Callable[[int], None] = crash_hook_from_env,
        export_timeout_s: float = 60.0,
    ) -> None:
        """:param backends: returns the (KMS, Secrets) backends, built on first use.
        :param enclave_factory: returns the steps' :class:`~.steps.EnclaveControl`.
        :param measure: :func:`~enclave_core.image.current.measure_new_image` (tests may pass
        another). :param after_step: the crash test hook (see :mod:`.steps`)."""
        self._config = config
        self._backends = backends
        self._enclave_factory = enclave_factory
        self._measure = measure
        self._after_step = after_step
        self._export_timeout_s = export_timeout_s
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._progress: dict[str, Any] | None = None
        #: Set when the supervisor stops: the steps' waits end early (the checkpoint stays).
        self.stopping = threading.Event()

    @property
    def running(self) -> bool:
        """Whether a migration is being planned or run by this supervisor."""
        return self._busy

    async def start(self, body: Any) -> tuple[int, dict[str, Any]]:
        """``POST /v1/migrate``: 202 and the progress when steps run, 200 for a no-op."""
        if self._busy:
            step = self._progress["step"] if self._progress else 0
            raise StateConflict(f"a migration is already running (step {step}/{TOTAL})")
        self._busy = True  # set before any await: a concurrent POST sees it
        try:
            request = parse_request(body)
            checkpoint = await asyncio.to_thread(self._plan, request)
        except BaseException:
            self._busy = False
            raise
        if checkpoint.status == "done":
            self._busy = False
            return 200, self._snapshot(checkpoint, "done", ALREADY_COMPLETE, steps=[])
        resumed = [
            {"step": k, "msg": "done before (resumed from the checkpoint)"}
            for k in range(1, checkpoint.step + 1)
        ]
        msg = (
            f"resuming migration {checkpoint.id} after step {checkpoint.step}/{TOTAL}"
            if checkpoint.step
            else f"migration {checkpoint.id} started"
        )
        self._progress = self._snapshot(checkpoint, "running", msg, steps=resumed)
        logger.bind(
            migration=checkpoint.id, step=checkpoint.step, total=TOTAL, status="running"
        ).info(msg)
        self._task = asyncio.create_task(self._run(checkpoint), name="migration")
        return 202, dict(self._progress)

    async def wait(self) -> None:
        """Wait for the running migration, if any, to stop (tests, shutdown)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self, timeout_s: float = 3.0) -> None:
        """The supervisor is stopping: end the steps' waits, give the step running a moment."""
        self.stopping.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=timeout_s)

    async def progress(self) -> dict[str, Any]:
        """``GET /v1/migrate``: this supervisor's latest progress, else the stored checkpoint."""
        if self._progress is not None:
            return {**self._progress, "steps": list(self._progress["steps"])}
        checkpoint = await asyncio.to_thread(self._read_checkpoint)
        if checkpoint is None:
            return {"step": 0, "total": TOTAL, "status": "none", "msg": "no migration has run"}
        if checkpoint.status == "done":
            return self._snapshot(checkpoint, "done", "migration complete", steps=[])
        if checkpoint.status in ("failed", "rolled_back"):
            msg = checkpoint.error or checkpoint.status
            return self._snapshot(checkpoint, checkpoint.status, msg, steps=[])
        msg = (
            f"migration {checkpoint.id} stopped after step {checkpoint.step}/{TOTAL}; "
            "run `enclave migrate` again with the same image to resume it"
        )
        return self._snapshot(checkpoint, "interrupted", msg, steps=[])

    async def schedule_key_deletion(self, days: Any) -> dict[str, Any]:
        """``POST /v1/schedule-key-deletion``: retire the key in ``MigrationOldKMSKeyID``."""
        if isinstance(days, bool) or not isinstance(days, int) or not 7 <= days <= 30:
            raise ValidationError("'days' must be a whole number from 7 to 30")
        if self._busy:
            raise StateConflict("a migration is running; schedule the old key's deletion after it")
        return await asyncio.to_thread(self._schedule_deletion, days)

    # ------------------------------------------------------------------ worker-thread parts

    def _read_checkpoint(self) -> Checkpoint | None:
        return read_checkpoint(self._backends()[1])

    def _plan(self, request: dict[str, str | None]) -> Checkpoint:
        """Measure the target and decide: a no-op (status done), a resumption or a new start."""
        kms, secrets = self._backends()
        source = None
        if request["app_dir"] is not None and self._config.mode == "development":
            # The new image is an immutable copy of the folder, as an EIF would be: editing the
            # folder afterwards changes neither the migration nor the image it installs.
            snapshot = take_snapshot(self._config, Path(request["app_dir"]))
            source = str(snapshot.source)
            request = {**request, "app_dir": str(snapshot.path)}
        target = self._measure(
            self._config, app_dir=request["app_dir"], eif=request["eif"], pcr0=request["pcr0"]
        )
        checkpoint = read_checkpoint(secrets)
        if checkpoint is not None and checkpoint.status == "done":
            if checkpoint.target_pcr0 == target:
                return checkpoint
            checkpoint = None  # a finished migration to another image: start a new one
        elif checkpoint is not None and checkpoint.status == "rolled_back":
            checkpoint = None  # its image failed and the old one serves: start afresh
        if checkpoint is not None and self._window_closed(checkpoint):
            self._abandon_key(kms, checkpoint)
            checkpoint = None  # the key can no longer receive the export: start over
        if checkpoint is not None:
            if checkpoint.target_pcr0 != target:
                raise StateConflict(
                    f"migration {checkpoint.id} to PCR0 {checkpoint.target_pcr0[:16]}… is "
                    f"unfinished (step {checkpoint.step}/{TOTAL}): run `enclave migrate` with that "
                    "image to finish it first"
                )
            if checkpoint.new_key_id is not None:
                self._check_new_key(kms, checkpoint)
            # The same image may be named by another path this time.
            checkpoint.app_dir, checkpoint.eif = request["app_dir"], request["eif"]
            checkpoint.app_source = source
            checkpoint.status, checkpoint.error = "running", None
        else:
            checkpoint = Checkpoint.new(
                self._config, target, app_dir=request["app_dir"], eif=request["eif"]
            )
            checkpoint.app_source = source
        write_checkpoint(secrets, checkpoint)
        return checkpoint

    @staticmethod
    def _window_closed(checkpoint: Checkpoint) -> bool:
        """Whether the key was made but not exported to, and its export window has closed."""
        if checkpoint.new_key_id is None or checkpoint.step >= 5 or not checkpoint.export_until:
            return False
        try:
            until = parse_deadline(checkpoint.export_until)
        except EnclaveError:
            return True
        return datetime.now(UTC) >= until

    @staticmethod
    def _abandon_key(kms: Kms, checkpoint: Checkpoint) -> None:
        """Retire a key whose export window closed before the export (it holds nothing)."""
        key = str(checkpoint.new_key_id)
        logger.bind(key_id=key, migration=checkpoint.id).warning(
            "the migration key's export window closed before the export; starting over with a "
            "new key, and scheduling this one's deletion"
        )
        try:
            kms.schedule_key_deletion(key, 7)
        except EnclaveError as exc:
            logger.bind(key_id=key, error=str(exc)).warning("unused migration key not retired")

    @staticmethod
    def _check_new_key(kms: Kms, checkpoint: Checkpoint) -> None:
        key = checkpoint.new_key_id
        try:
            state = kms.describe_key(str(key)).state
        except NotFound:
            state = "gone"
        if state == "Enabled":
            return
        if checkpoint.step >= 7:
            fate = (
                "the secrets were already moved to it: cancel its deletion "
                "(kms cancel-key-deletion, then enable-key) to recover them"
            )
        else:
            fate = (
                f"the secrets are still under key {checkpoint.old_key_id}: delete the parameter "
                "Migration/Checkpoint to start a new migration"
            )
        raise StateConflict(f"the migration's new key {key} no longer exists ({state}); {fate}")

    def _run_steps(self, checkpoint: Checkpoint) -> None:
        kms, secrets = self._backends()
        runner = MigrationRunner(
            self._config,
            kms=kms,
            secrets=secrets,
            enclave=self._enclave_factory(),
            after_step=self._after_step,
            on_progress=self._on_progress,
            export_timeout_s=self._export_timeout_s,
            stopping=self.stopping,
        )
        runner.run(checkpoint)

    async def _run(self, checkpoint: Checkpoint) -> None:
        try:
            await asyncio.to_thread(self._run_steps, checkpoint)
        except Exception as exc:  # noqa: BLE001 - a bug must still end the migration visibly
            logger.opt(exception=exc).error("migration stopped unexpectedly")
            if self._progress is not None:
                self._progress["status"] = "failed"
                self._progress["msg"] = f"{type(exc).__name__}: {exc}"
        finally:
            self._busy = False

    def _on_progress(self, step: int, status: str, msg: str, checkpoint: Checkpoint) -> None:
        """Runs in the worker thread; the API reads a fresh copy of the steps each time."""
        if self._progress is None:
            return
        steps = list(self._progress["steps"])
        if status not in ("failed", "rolled_back"):
            steps.append({"step": step, "msg": msg})
        self._progress = self._snapshot(checkpoint, status, msg, steps=steps)

    @staticmethod
    def _snapshot(
        checkpoint: Checkpoint, status: str, msg: str, *, steps: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "id": checkpoint.id,
            "step": checkpoint.step,
            "total": TOTAL,
            "status": status,
            "msg": msg,
            "target_pcr0": checkpoint.target_pcr0,
            "new_key_id": checkpoint.new_key_id,
            "steps": steps,
        }

    @staticmethod
    def _same_key(kms: Kms, info: KeyInfo, other: str) -> bool:
        """Whether ``other`` (an id, an ARN or an alias) names the key ``info`` describes."""
        if other in (info.key_id, info.arn):
            return True
        try:
            described = kms.describe_key(other)
        except EnclaveError:
            return False
        return (described.key_id, described.arn) == (info.key_id, info.arn)

    def _schedule_deletion(self, days: int) -> dict[str, Any]:
        kms, secrets = self._backends()
        old = secrets.get(OLD_KEY_PARAM)
        if old is None:
            raise StateConflict(
                f"no key to delete: parameter {OLD_KEY_PARAM} is not set (after a migration the "
                "new enclave schedules the old key's deletion itself)"
            )
        live = secrets.get(KMS_KEY_PARAM)
        if old == live:
            raise StateConflict(f"key {old} is the key in use ({KMS_KEY_PARAM}); not deleting it")
        try:
            info = kms.describe_key(old)
        except NotFound:
            secrets.delete(OLD_KEY_PARAM)
            return {"key_id": old, "state": "NotFound", "deletion_date": None}
        if live is not None and self._same_key(kms, info, live):
            raise StateConflict(
                f"key {old} is the key in use ({KMS_KEY_PARAM} names it as {live}); not deleting it"
            )
        if info.state != "PendingDeletion":
            info = kms.schedule_key_deletion(old, days)
        secrets.delete(OLD_KEY_PARAM)
        logger.bind(key_id=old, deletion_date=info.deletion_date).info(
            "old KMS key scheduled for deletion"
        )
        return {"key_id": info.key_id, "state": info.state, "deletion_date": info.deletion_date}
