"""Put the old version back when the new image fails at step 8.

Steps 4 and 7 save what they overwrite under ``Migration/Rollback/`` and step 8 keeps the image
it replaces; :func:`roll_back` restores the parameters, ``KMSKeyID`` and the image, schedules the
unused new key's deletion and restarts the old enclave. It gives the host nothing it could not do
itself (docs/threat-model.md, P6).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from enclave_core.config import Config
from enclave_core.errors import EnclaveError
from enclave_core.image.current import image_path
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
    Checkpoint,
    migrated_names,
)

ROLLBACK_PREFIX = f"{MIGRATION_PREFIX}Rollback/"
CHAIN_PREFIX = "Chain/"
#: The waiting period for the unused new key of a rolled-back migration.
ABANDONED_KEY_DAYS = 7


class RolledBack(EnclaveError):
    """The new image failed and the previous one serves again (the checkpoint says so)."""


#: Written by the old enclave's export (for people to read); put back, or removed, by a rollback.
EXPORT_NOTES = ("MigrationPreviousPCR0", "MigrationPreviousPCR0Attestation")


def save_export_notes(secrets: Secrets) -> None:
    """Step 4, before the export: copy the parameters the export overwrites (those present)."""
    for name in EXPORT_NOTES:
        value = secrets.get(name)
        if value is not None and secrets.get(f"{ROLLBACK_PREFIX}{name}") is None:
            secrets.put(f"{ROLLBACK_PREFIX}{name}", value)


def live_params(config: Config) -> list[str]:
    """What step 7 overwrites: each migrated ciphertext, then the manifest."""
    return [f"{name}/Ciphertext" for name in migrated_names(config)] + [MANIFEST_PARAM]


def save_for_rollback(config: Config, secrets: Secrets) -> None:
    """Step 7, before it overwrites anything: copy each live parameter it will overwrite.

    A copy already there is kept: it was taken before the first overwrite of an earlier try.
    """
    for name in live_params(config):
        copy = f"{ROLLBACK_PREFIX}{name}"
        if secrets.get(copy) is not None:
            continue
        value = secrets.get(name)
        if value is not None:
            secrets.put(copy, value)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ImageBackup:
    """The image step 8 replaces, kept beside it as ``<name>.before-<migration id>``.

    In development the image is ``image.json`` (which snapshot runs); an empty backup means there
    was none (the enclave ran ``app.dir``). In production it is the EIF itself.
    """

    def __init__(self, config: Config, checkpoint: Checkpoint) -> None:
        self.target = (
            config.resolve(config.enclave.eif) if checkpoint.eif is not None else image_path(config)
        )
        self.development = checkpoint.eif is None
        self.path = self.target.with_name(f"{self.target.name}.before-{checkpoint.id}")

    def keep(self) -> None:
        """Copy the image about to be replaced (once: a resumed step 8 keeps the first copy)."""
        if self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.target.is_file():
            _write_atomically(self.path, self.target.read_bytes())
        elif self.development:
            _write_atomically(self.path, b"")

    def kept_app_dir(self) -> Path | None:
        """Development: the folder of the kept image (the one running before this migration)."""
        if not self.development or not self.path.exists():
            return None
        try:
            record = json.loads(self.path.read_text(encoding="utf-8") or "null")
        except ValueError:
            return None
        folder = record.get("app_dir") if isinstance(record, dict) else None
        return Path(folder) if isinstance(folder, str) else None

    def restore(self) -> None:
        """Put the kept image back; EnclaveError when there is none to put back."""
        if not self.path.exists():
            raise EnclaveError(f"the previous image was not kept ({self.path} is missing)")
        data = self.path.read_bytes()
        if self.development and not data:
            self.target.unlink(missing_ok=True)
        else:
            _write_atomically(self.target, data)
        self.discard()

    def discard(self) -> None:
        """Forget the kept image (the migration succeeded, or it was put back)."""
        self.path.unlink(missing_ok=True)


def roll_back(
    config: Config,
    checkpoint: Checkpoint,
    *,
    secrets: Secrets,
    kms: Kms,
    image: ImageBackup,
    restart: Callable[[], None],
) -> None:
    """Put the old version back and start it; EnclaveError if it cannot be done or fails.

    The order matters for a crash halfway: the parameters and ``KMSKeyID`` first (the old enclave
    needs all of them), then the image, then the restart; the migration's own parameters are
    forgotten only once the old enclave is ready.
    """
    assert checkpoint.old_key_id is not None
    copies = {name: secrets.get(f"{ROLLBACK_PREFIX}{name}") for name in live_params(config)}
    lost = sorted(name for name, value in copies.items() if value is None)
    if lost:
        raise EnclaveError(f"cannot roll back: the saved copies of {', '.join(lost)} are missing")
    link = secrets.get(LINK_PARAM)
    for name, value in copies.items():
        assert value is not None
        secrets.put(name, value)
    secrets.put(KMS_KEY_PARAM, checkpoint.old_key_id)
    for name in EXPORT_NOTES:
        note = secrets.get(f"{ROLLBACK_PREFIX}{name}")
        if note is None:
            secrets.delete(name)
        else:
            secrets.put(name, note)
    image.restore()
    restart()
    # The old version serves: forget the failed image's traces.
    if link is not None:
        for name in secrets.list(CHAIN_PREFIX):
            if secrets.get(name) == link:  # the link the new enclave stored as its chain
                secrets.delete(name)
    leftovers = [n for n in secrets.list(MIGRATION_PREFIX) if n != CHECKPOINT_PARAM]
    for name in [NEW_KEY_PARAM, TARGET_PARAM, OLD_KEY_PARAM, *leftovers]:
        secrets.delete(name)
    if checkpoint.new_key_id is not None:
        try:
            kms.schedule_key_deletion(checkpoint.new_key_id, ABANDONED_KEY_DAYS)
        except EnclaveError as exc:
            logger.bind(key_id=checkpoint.new_key_id, error=str(exc)).warning(
                "the rolled-back migration's key was not scheduled for deletion"
            )
