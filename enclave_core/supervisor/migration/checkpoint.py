"""``Migration/Checkpoint``: what a migration has done so far, and the parameter names it uses.

The checkpoint is JSON in the Secrets backend (``id``, ``step``, ``total``, ``status``, the keys,
the target and its source, timestamps, ``error``). With ``ENCLAVE_MIGRATION_CRASH_AFTER_STEP=k``
in the supervisor's environment, :func:`crash_hook_from_env` ends the process right after step
k's checkpoint, so tests can kill the supervisor at every step.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from loguru import logger

from enclave_core.config import Config
from enclave_core.errors import EnclaveError
from enclave_core.log import utc_now
from enclave_core.plugin.interfaces import Secrets

TOTAL = 9
KMS_KEY_PARAM = "KMSKeyID"
NEW_KEY_PARAM = "MigrationKMSKeyID"
OLD_KEY_PARAM = "MigrationOldKMSKeyID"
TARGET_PARAM = "MigrationTargetPCR0"
CHECKPOINT_PARAM = "Migration/Checkpoint"
#: The old enclave's chain link for the new image (written at export, step 5).
LINK_PARAM = "Migration/Manifest"
#: The live manifest the runtime traces its ciphertexts with (step 7 puts the link there).
MANIFEST_PARAM = "CiphertextManifest"
MIGRATION_PREFIX = "Migration/"
DEK_NAME = "StorageDEK"
CRASH_ENV = "ENCLAVE_MIGRATION_CRASH_AFTER_STEP"
CRASH_EXIT_CODE = 70


@dataclass
class Checkpoint:
    """``Migration/Checkpoint``: what a migration has done so far (step = last completed)."""

    id: str
    target_pcr0: str
    step: int = 0
    total: int = TOTAL
    status: str = "running"  # running, done, failed, rolled_back (the old image serves again)
    old_key_id: str | None = None
    new_key_id: str | None = None
    previous_pcr0: str | None = None
    app_dir: str | None = None
    #: The folder a development image's snapshot (``app_dir``) was taken of.
    app_source: str | None = None
    eif: str | None = None
    #: The enclave's IAM principal, as the old key's policy names it (for the report only).
    principal: str | None = None
    #: The new image's PCR8 when it is signed (announced to the old enclave, which checks it).
    target_pcr8: str | None = None
    #: When the new key's export window closes (the old enclave chose it at step 2).
    export_until: str | None = None
    #: The new key's description; it carries the migration id so a crash between CreateKey and
    #: the checkpoint is found again instead of creating a second key.
    key_description: str = ""
    started_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)
    error: str | None = None

    @classmethod
    def new(
        cls, config: Config, target_pcr0: str, *, app_dir: str | None, eif: str | None
    ) -> Checkpoint:
        """A fresh migration to ``target_pcr0`` (step 0)."""
        ident = str(uuid.uuid4())
        description = (
            f"{config.name} enclave key for PCR0 {target_pcr0} (simple-enclave migration {ident})"
        )
        return cls(ident, target_pcr0, app_dir=app_dir, eif=eif, key_description=description)

    def as_json(self) -> dict[str, Any]:
        """The parameter's JSON (``error`` only when set; ``app_dir`` or ``eif``)."""
        doc = asdict(self)
        for optional in ("error", "app_dir", "app_source", "eif"):
            if doc[optional] is None:
                del doc[optional]
        return doc

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        """Parse the parameter; EnclaveError naming it when it is not a checkpoint."""
        try:
            doc = json.loads(text)
            known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
            checkpoint = cls(**known)
        except (ValueError, TypeError, AttributeError):
            raise EnclaveError(
                f"parameter {CHECKPOINT_PARAM} is not a migration checkpoint"
            ) from None
        if not isinstance(checkpoint.step, int) or not 0 <= checkpoint.step <= TOTAL:
            raise EnclaveError(f"parameter {CHECKPOINT_PARAM} has an invalid step")
        return checkpoint


def read_checkpoint(secrets: Secrets) -> Checkpoint | None:
    """The stored checkpoint, or None when no migration ever started."""
    text = secrets.get(CHECKPOINT_PARAM)
    return Checkpoint.from_json(text) if text is not None else None


def write_checkpoint(secrets: Secrets, checkpoint: Checkpoint) -> None:
    """Store the checkpoint (its ``updated_at`` set to now)."""
    checkpoint.updated_at = utc_now()
    secrets.put(CHECKPOINT_PARAM, json.dumps(checkpoint.as_json(), sort_keys=True))


def migrated_names(config: Config) -> list[str]:
    """The names whose ciphertexts move: every static secret, then the storage data key."""
    return [s.name for s in config.secrets.static] + [DEK_NAME]


def crash_hook_from_env(step: int) -> None:
    """Test hook: end the process right after ``step`` if ``ENCLAVE_MIGRATION_CRASH_AFTER_STEP``
    names it (see the module docstring)."""
    if os.environ.get(CRASH_ENV, "").strip() == str(step):
        logger.bind(step=step).warning("test hook: supervisor crashing after migration step")
        os._exit(CRASH_EXIT_CODE)
