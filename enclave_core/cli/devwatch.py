"""`enclave dev`'s edit loop: the image the enclave runs, and migrations to the files as edited.

:func:`prepare_image` runs before the supervisor starts: it makes the first snapshot, or finds
that the files changed since the running image was made. :class:`DevWatcher` then runs beside
the supervisor: it migrates to changed files once the enclave is up (unless ``--no-migrate``),
and with ``--watch`` runs the real nine-step migration after each settled edit, through the
supervisor's API, printing ``[k/9]`` and the new PCR0.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from enclave_core.config import Config
from enclave_core.errors import EnclaveError
from enclave_core.image.current import measure_new_image, read_image_override, write_image_override
from enclave_core.image.files import image_files
from enclave_core.image.snapshot import content_digest, read_digest, take_snapshot
from enclave_core.plugin.manager import PluginManager

#: How often the folder is looked at, and how long edits must have settled before a migration.
POLL_S = 0.2
SETTLE_S = 0.4

Write = Callable[[str], None]


@dataclass(frozen=True)
class ImagePlan:
    """What :func:`prepare_image` found: whether the running image lags the files."""

    changed: bool
    pcr0: str


def _record_snapshot(config: Config, folder: Path, plugins: PluginManager | None) -> str:
    snapshot = take_snapshot(config, folder)
    pcr0 = measure_new_image(config, app_dir=snapshot.path, plugins=plugins)
    write_image_override(
        config, snapshot.path, pcr0, digest=snapshot.digest, source=snapshot.source
    )
    return pcr0


def prepare_image(
    config: Config,
    source: Path,
    write: Write,
    *,
    migrate: bool,
    plugins: PluginManager | None = None,
) -> ImagePlan:
    """Make sure ``.enclave/image.json`` names a snapshot before the enclave starts.

    :param source: the app's folder as the developer edits it (``app.dir``).
    :param migrate: whether changed files will be migrated to once the enclave is up; if not
        (``--no-migrate``), the enclave runs a snapshot of the current files unmigrated, as a new
        EIF would run before ``enclave migrate`` (its KMS key refuses it).
    """
    current = read_image_override(config)
    if current is None or not Path(current["app_dir"]).is_dir():
        if current is not None:
            write(
                f"the image the enclave ran ({current['app_dir']}) is gone; running a snapshot "
                f"of {source} instead"
            )
        return ImagePlan(changed=False, pcr0=_record_snapshot(config, source, plugins))
    if read_digest(current) == content_digest(config, source):
        return ImagePlan(changed=False, pcr0=current["pcr0"])
    made_of = current.get("source")
    if made_of is not None and Path(made_of) != source:
        # The image came from another folder (`enclave migrate --app-dir elsewhere`): it is the
        # one chosen, whatever app.dir holds; only an edit seen by --watch replaces it.
        write(f"running the image made of {made_of} (PCR0 {current['pcr0'][:16]}…)")
        return ImagePlan(changed=False, pcr0=current["pcr0"])
    if not migrate:
        pcr0 = _record_snapshot(config, source, plugins)
        write(
            f"the app changed since its image (PCR0 {current['pcr0'][:16]}…) was made; "
            f"--no-migrate: running the new files (PCR0 {pcr0[:16]}…) without migrating"
        )
        return ImagePlan(changed=False, pcr0=pcr0)
    write(
        f"the app changed since its image (PCR0 {current['pcr0'][:16]}…) was made: the enclave "
        "starts on that image, then migrates to the current files"
    )
    return ImagePlan(changed=True, pcr0=current["pcr0"])


def _signature(config: Config, source: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detection: each image file's name, size and modification time."""
    rows = []
    for relative, path in image_files(
        source, exclude=config.app.exclude, private=[config.state_dir]
    ):
        try:
            stat = path.stat()
        except OSError:
            continue
        rows.append((relative, stat.st_size, stat.st_mtime_ns))
    return tuple(rows)


class DevWatcher(threading.Thread):
    """Migrates `enclave dev` to the app's files as they change (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        source: Path,
        write: Write,
        *,
        migrate_now: bool,
        watch: bool,
        client_factory: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(name="enclave-dev-watch", daemon=True)
        self._config = config
        self._source = source
        self._write = write
        self._migrate_now = migrate_now
        self._watch = watch
        self._client_factory = client_factory
        self.stopping = threading.Event()
        #: Seconds from the change being seen to the new image serving, per migration.
        self.timings: list[float] = []

    def run(self) -> None:
        """Migrate once if asked, then watch until stopped."""
        if self._migrate_now:
            self.migrate(time.monotonic())
        if not self._watch:
            return
        seen = _signature(self._config, self._source)
        while not self.stopping.wait(POLL_S):
            now = _signature(self._config, self._source)
            if now == seen:
                continue
            changed_at = time.monotonic()
            while not self.stopping.wait(SETTLE_S):  # let an editor finish writing
                settled = _signature(self._config, self._source)
                if settled == now:
                    break
                now = settled
            seen = now
            current = read_image_override(self._config)
            if current is not None and read_digest(current) == content_digest(
                self._config, self._source
            ):
                continue  # back to the running image's content
            self.migrate(changed_at)

    def _client(self) -> object:
        if self._client_factory is not None:
            return self._client_factory()
        from enclave_core.cli.supervisor_client import SupervisorClient

        return SupervisorClient(self._config, timeout_s=300.0)

    def migrate(self, since: float) -> bool:
        """Run the migration to the current files; print its steps; return whether it worked."""
        from enclave_core.cli.migrate import follow_migration

        self._write(f"migrating to the files of {self._source}")
        client = self._client()
        try:
            first = client.migrate(app_dir=str(self._source))  # type: ignore[attr-defined]
            if first.get("status") == "done":
                self._write(str(first.get("msg")))
                return True
            final = follow_migration(client, str(first.get("id")), self._write)
        except EnclaveError as exc:
            self._write(f"migration failed: {exc}; the previous version keeps serving")
            return False
        if final.get("status") != "done":
            self._write(failure_line(final))
            return False
        elapsed = time.monotonic() - since
        self.timings.append(elapsed)
        target = str(final.get("target_pcr0") or "")
        self._write(f"new image serving: PCR0 {target[:16]}… ({elapsed:.1f} s after the change)")
        return True


def failure_line(progress: dict[str, object]) -> str:
    """What a failed migration means for the app: which version serves, and what to do."""
    status, msg, step = progress.get("status"), progress.get("msg"), progress.get("step")
    if status == "rolled_back":
        return f"migration failed: {msg}"  # the message says the previous image serves again
    if isinstance(step, int) and step >= 7:
        return (
            f"migration failed: {msg}; the secrets already moved to the new image: fix the "
            "files and save again, or run `enclave migrate --app-dir .`"
        )
    return f"migration failed: {msg}; the previous version keeps serving"
